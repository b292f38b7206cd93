//! The admin HTTP API (hyper 1.x): status, control endpoints, Prometheus metrics, liveness
//! and readiness. Bound to loopback by default; when a bearer token is configured every
//! endpoint but `/healthz` requires it. Nothing it returns contains a secret.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::control::{mode_name, Control};
use crate::route::{MirrorMode, Side};

/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

/// Serves admin requests until `shutdown` fires.
pub async fn serve(listener: TcpListener, control: Arc<Control>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let control = control.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let control = control.clone();
                        async move { Ok::<_, Infallible>(handle(&control, req).await) }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn handle(control: &Control, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = if path != "/healthz" && !authorized(control, &req) {
        json_error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token (Authorization: Bearer <admin token>)")
    } else if method == Method::POST {
        match read_body(req).await {
            Ok(body) => post(control, &path, &body).await,
            Err(msg) => json_error(StatusCode::BAD_REQUEST, &msg),
        }
    } else if method == Method::GET {
        get(control, &path)
    } else {
        json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST")
    };
    let endpoint = match path.as_str() {
        "/status" | "/metrics" | "/healthz" | "/readyz" | "/cutover" | "/rollback" | "/mirror" | "/compare" => &path,
        _ => "other",
    };
    control.proxy.metrics.admin_requests.with_label_values(&[endpoint, response.status().as_str()]).inc();
    response
}

/// Constant-time comparison of the bearer token, so response timing reveals nothing.
fn authorized(control: &Control, req: &Request<Incoming>) -> bool {
    let Some(token) = control.token() else { return true };
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    use sha2::{Digest, Sha256};
    let a: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    let b: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn get(control: &Control, path: &str) -> Response<Full<Bytes>> {
    let proxy = &control.proxy;
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            // Ready when every backend that serves slots now is reachable.
            let set = proxy.backend_set();
            let routing = proxy.routing.load();
            let serving: Vec<Side> = match routing.plan.uniform() {
                Some(side) => vec![side],
                None => vec![Side::Source, Side::Target],
            };
            let down: Vec<&str> = serving
                .iter()
                .map(|&s| set.get(s))
                .filter(|b| !b.health().is_up())
                .map(|b| b.name().as_ref())
                .collect();
            if down.is_empty() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, &format!("serving backends down: {}\n", down.join(", ")))
            }
        }
        "/metrics" => {
            let set = proxy.backend_set();
            proxy.metrics.observe_mirrors(&set.mirrors);
            for b in set.iter() {
                proxy.metrics.backend_up.with_label_values(&[b.name().as_ref()]).set(b.health().is_up() as i64);
                if let Some(c) = b.cluster() {
                    let redirects = proxy.metrics.cluster_redirects.with_label_values(&[b.name().as_ref()]);
                    redirects.inc_by(c.redirects().saturating_sub(redirects.get()));
                    let primaries = c.primaries().len() as i64;
                    proxy.metrics.cluster_primaries.with_label_values(&[b.name().as_ref()]).set(primaries);
                }
            }
            let mut r = Response::new(Full::new(Bytes::from(proxy.metrics.render())));
            r.headers_mut().insert("content-type", "text/plain; version=0.0.4".parse().expect("static header"));
            r
        }
        "/status" => json(StatusCode::OK, &status(control)),
        _ => json_error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

/// The `/status` document.
pub fn status(control: &Control) -> serde_json::Value {
    let proxy = &control.proxy;
    let set = proxy.backend_set();
    let backends: Vec<_> = set
        .iter()
        .map(|b| {
            let mut v = serde_json::json!({
                "name": b.name().as_ref(),
                "addr": b.settings().describe(),
                "up": b.health().is_up(),
                "last_error": b.health().last_error(),
                "server_version": b.server_version(),
            });
            if let Some(c) = b.cluster() {
                v["cluster"] = serde_json::json!({ "primaries": c.primaries(), "redirects": c.redirects() });
            }
            if let crate::backend::Topology::Sentinel(s) = &b.settings().topology {
                v["sentinel"] = serde_json::json!({ "master_name": s.master_name(), "master": s.current() });
            }
            v
        })
        .collect();
    let routing = proxy.routing.load();
    let mut towards = serde_json::Map::new();
    for side in [Side::Source, Side::Target] {
        if let Some(q) = set.mirrors.queue(side) {
            let mut v = serde_json::to_value(q.stats().snapshot()).unwrap_or_default();
            v["queue_depth"] = q.depth().into();
            v["jobs"] = q.stats().jobs().into();
            towards.insert(side.name().to_string(), v);
        }
    }
    let cs = control.status();
    serde_json::json!({
        "generation": cs.generation,
        "last_change": cs.last_change,
        "last_reload_error": cs.last_reload_error,
        "reloads": { "ok": cs.reloads_ok, "error": cs.reloads_error },
        "clients": proxy.client_count(),
        "commands": proxy.metrics.commands.get(),
        "command_table_size": proxy.commands.load().len(),
        "backends": backends,
        "cutover": {
            "percent": routing.plan.percent(),
            "moved_slots": routing.plan.moved_slots(),
            "flip_in_progress": routing.moving.as_ref().map(|m| m.len()),
        },
        "mirror": { "mode": mode_name(routing.mirror), "towards": towards },
        "compare": proxy.compare.status(),
        "ramp": control.ramp_status(),
    })
}

async fn post(control: &Control, path: &str, body: &[u8]) -> Response<Full<Bytes>> {
    let parsed: serde_json::Value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::json!({})
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("body is not valid JSON: {e}")),
        }
    };
    // The error is the message for a 400 reply.
    let percent_field = |name: &str| -> Result<Option<f64>, String> {
        match parsed.get(name) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(p) if (0.0..=100.0).contains(&p) => Ok(Some(p)),
                _ => Err(format!("\"{name}\" must be a number within 0..100, got {v}")),
            },
        }
    };
    let has_target = control.proxy.has_target();
    match path {
        "/cutover" | "/rollback" => {
            let percent = match (path, percent_field(if path == "/cutover" { "percent" } else { "to" })) {
                (_, Err(msg)) => return json_error(StatusCode::BAD_REQUEST, &msg),
                ("/cutover", Ok(None)) => {
                    return json_error(StatusCode::BAD_REQUEST, "expected {\"percent\": <number 0..100>}")
                }
                (_, Ok(None)) => 0.0,
                (_, Ok(Some(p))) => p,
            };
            if path == "/rollback" && percent > control.proxy.routing.load().plan.percent() {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "a rollback only lowers the cutover; use /cutover to raise it",
                );
            }
            if !has_target && percent > 0.0 {
                return json_error(StatusCode::CONFLICT, "no target backend is configured");
            }
            let what = if path == "/rollback" { "rollback" } else { "cutover" };
            let report = control.set_cutover(percent, what).await;
            let mut body = serde_json::to_value(&report).unwrap_or_default();
            if report.applied {
                json(StatusCode::OK, &body)
            } else {
                body["error"] = format!(
                    "{what} to {percent} not done, the split is unchanged: {}",
                    report.reason.as_deref().unwrap_or("")
                )
                .into();
                json(StatusCode::SERVICE_UNAVAILABLE, &body)
            }
        }
        "/mirror" => {
            let mode = match parsed.get("mode").and_then(|m| m.as_str()) {
                Some("off") => MirrorMode::Off,
                Some("async") => MirrorMode::Async,
                Some("sync") => MirrorMode::Sync,
                _ => return json_error(StatusCode::BAD_REQUEST, "expected {\"mode\": \"off\" | \"async\" | \"sync\"}"),
            };
            if !has_target && mode != MirrorMode::Off {
                return json_error(StatusCode::CONFLICT, "no target backend is configured");
            }
            control.set_mirror(mode).await;
            json(StatusCode::OK, &serde_json::json!({ "mode": mode_name(mode) }))
        }
        "/compare" => match percent_field("percent") {
            Err(msg) => json_error(StatusCode::BAD_REQUEST, &msg),
            Ok(None) => json_error(StatusCode::BAD_REQUEST, "expected {\"percent\": <number 0..100>}"),
            Ok(Some(p)) => {
                control.set_compare(p).await;
                json(StatusCode::OK, &serde_json::json!({ "percent": p }))
            }
        },
        _ => json_error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, String> {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(format!("cannot read body: {e}")),
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{value:#}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", "application/json".parse().expect("static header"));
    r
}

fn json_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r
}
