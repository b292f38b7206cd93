//! The admin HTTP listener (hyper 1.x): liveness, readiness, Prometheus metrics and a JSON
//! status. Bound to loopback by default; it never prints secrets.

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

use crate::route::{MirrorMode, Side};
use crate::server::Proxy;

/// Serves admin requests until `shutdown` fires.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let proxy = proxy.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let proxy = proxy.clone();
                        async move { Ok::<_, Infallible>(route(&proxy, req).await) }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

async fn route(proxy: &Proxy, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if method == Method::POST {
        let body = match read_body(req).await {
            Ok(b) => b,
            Err(msg) => return json_error(StatusCode::BAD_REQUEST, &msg),
        };
        return post(proxy, &path, &body).await;
    }
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            let down: Vec<&str> = proxy.backends().filter(|b| !b.health().is_up()).map(|b| b.name().as_ref()).collect();
            if down.is_empty() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, &format!("backends down: {}\n", down.join(", ")))
            }
        }
        (&Method::GET, "/metrics") => {
            proxy.metrics.observe_mirrors(&proxy.mirrors);
            for b in proxy.backends() {
                proxy.metrics.backend_up.with_label_values(&[b.name()]).set(b.health().is_up() as i64);
            }
            let mut r = Response::new(Full::new(Bytes::from(proxy.metrics.render())));
            r.headers_mut().insert("content-type", "text/plain; version=0.0.4".parse().expect("static header"));
            r
        }
        (&Method::GET, "/status") => {
            let backends: Vec<_> = proxy
                .backends()
                .map(|b| {
                    serde_json::json!({
                        "name": b.name().as_ref(),
                        "addr": b.settings().addr,
                        "up": b.health().is_up(),
                        "last_error": b.health().last_error(),
                        "server_version": b.server_version(),
                    })
                })
                .collect();
            let routing = proxy.routing.load();
            let mut mirror = serde_json::Map::new();
            for side in [Side::Source, Side::Target] {
                if let Some(q) = proxy.mirrors.queue(side) {
                    let mut v = serde_json::to_value(q.stats.snapshot()).unwrap_or_default();
                    v["queue_depth"] = q.depth().into();
                    mirror.insert(side.name().to_string(), v);
                }
            }
            let body = serde_json::json!({
                "clients": proxy.client_count(),
                "backends": backends,
                "commands": proxy.metrics.commands.get(),
                "command_table_size": proxy.commands.load().len(),
                "cutover": {
                    "percent": routing.plan.percent(),
                    "moved_slots": routing.plan.moved_slots(),
                    "flip_in_progress": routing.moving.as_ref().map(|m| m.len()),
                },
                "mirror": {
                    "mode": mode_name(routing.mirror),
                    "towards": mirror,
                },
            });
            let mut r = Response::new(Full::new(Bytes::from(format!("{body:#}\n"))));
            r.headers_mut().insert("content-type", "application/json".parse().expect("static header"));
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn post(proxy: &Proxy, path: &str, body: &[u8]) -> Response<Full<Bytes>> {
    let parsed: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("body is not valid JSON: {e}")),
    };
    match path {
        "/cutover" => {
            let Some(percent) = parsed.get("percent").and_then(|p| p.as_f64()) else {
                return json_error(StatusCode::BAD_REQUEST, "expected {\"percent\": <number 0..100>}");
            };
            if !(0.0..=100.0).contains(&percent) {
                return json_error(StatusCode::BAD_REQUEST, &format!("percent must be within 0..100, got {percent}"));
            }
            if proxy.target.is_none() && percent > 0.0 {
                return json_error(StatusCode::CONFLICT, "no target backend is configured");
            }
            let report = proxy.set_cutover(percent).await;
            json(StatusCode::OK, &serde_json::to_value(report).unwrap_or_default())
        }
        "/mirror" => {
            let mode = match parsed.get("mode").and_then(|m| m.as_str()) {
                Some("off") => MirrorMode::Off,
                Some("async") => MirrorMode::Async,
                Some("sync") => MirrorMode::Sync,
                _ => return json_error(StatusCode::BAD_REQUEST, "expected {\"mode\": \"off\" | \"async\" | \"sync\"}"),
            };
            if proxy.target.is_none() && mode != MirrorMode::Off {
                return json_error(StatusCode::CONFLICT, "no target backend is configured");
            }
            proxy.set_mirror_mode(mode);
            json(StatusCode::OK, &serde_json::json!({ "mode": mode_name(mode) }))
        }
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

fn mode_name(mode: MirrorMode) -> &'static str {
    match mode {
        MirrorMode::Off => "off",
        MirrorMode::Async => "async",
        MirrorMode::Sync => "sync",
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
