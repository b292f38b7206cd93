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
                        async move { Ok::<_, Infallible>(route(&proxy, req)) }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
            _ = shutdown.changed() => return,
        }
    }
}

fn route(proxy: &Proxy, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            let down: Vec<&str> = proxy
                .backends()
                .filter(|b| !b.health().is_up())
                .map(|b| b.name().as_ref())
                .collect();
            if down.is_empty() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("backends down: {}\n", down.join(", ")),
                )
            }
        }
        (&Method::GET, "/metrics") => {
            for b in proxy.backends() {
                proxy
                    .metrics
                    .backend_up
                    .with_label_values(&[b.name()])
                    .set(b.health().is_up() as i64);
            }
            let mut r = Response::new(Full::new(Bytes::from(proxy.metrics.render())));
            r.headers_mut().insert(
                "content-type",
                "text/plain; version=0.0.4".parse().expect("static header"),
            );
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
            let body = serde_json::json!({
                "clients": proxy.client_count(),
                "backends": backends,
                "commands": proxy.metrics.commands.get(),
                "command_table_size": proxy.commands.load().len(),
            });
            let mut r = Response::new(Full::new(Bytes::from(format!("{body:#}\n"))));
            r.headers_mut().insert(
                "content-type",
                "application/json".parse().expect("static header"),
            );
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r
}
