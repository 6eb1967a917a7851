//! The node's HTTP endpoint (`--metrics`): Prometheus metrics at `/metrics`,
//! the status page at `/`, and its data as JSON at `/status`.
//!
//! Read-only and unauthenticated, like every Prometheus exporter: it binds
//! loopback unless told otherwise (docs/OPERATING.md). HTTP/1.1 only, GET and
//! HEAD only, through hyper with a header read timeout, a small buffer, no
//! keep-alive and a bound on connections served at once.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::watch};

use crate::{Failure, status::Observer};

/// Connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 32;
/// Time a client has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a whole connection may last.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// hyper's read buffer (its minimum): bounds a request's head.
const MAX_BUF: usize = 8192;

const PAGE: &str = include_str!("status.html");

/// Binds the HTTP endpoint.
pub(crate) async fn bind(addr: &str) -> Result<TcpListener, Failure> {
    let parsed: SocketAddr = addr.parse().map_err(|e| {
        Failure::config(format!(
            "metrics address `{addr}`: {e} (an IP address and port, e.g. 127.0.0.1:9464)"
        ))
    })?;
    TcpListener::bind(parsed)
        .await
        .map_err(|e| Failure::config(format!("metrics address {parsed}: cannot bind: {e}")))
}

/// Serves until `stop` is set.
pub(crate) async fn serve(
    listener: TcpListener,
    observer: Arc<Observer>,
    stop: watch::Sender<bool>,
) {
    let mut stopped = stop.subscribe();
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    drop(stream);
                    continue;
                };
                let observer = observer.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let observer = observer.clone();
                        async move { Ok::<_, Infallible>(route(&observer, &req).await) }
                    });
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .max_buf_size(MAX_BUF)
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service);
                    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
                    drop(permit);
                });
            }
        }
    }
}

fn response(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

async fn route(observer: &Observer, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "GET only\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/" => response(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        "/status" => match observer.status().await {
            Ok(s) => match serde_json::to_vec(&s) {
                Ok(body) => response(StatusCode::OK, "application/json", body),
                Err(e) => error(e.to_string()),
            },
            Err(e) => error(e),
        },
        "/metrics" => response(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            observer.metrics_text(),
        ),
        _ => response(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /, /status or /metrics\n",
        ),
    }
}

fn error(message: String) -> Response<Full<Bytes>> {
    response(
        StatusCode::SERVICE_UNAVAILABLE,
        "application/json",
        serde_json::json!({ "error": message }).to_string(),
    )
}
