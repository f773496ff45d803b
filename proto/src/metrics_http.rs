//! The `/metrics` endpoint the controller and the agents serve: plain
//! HTTP/1.1 on a listener handed to it, for a Prometheus server (or `curl`)
//! to scrape.
//!
//! Owns only the HTTP side: `GET /metrics` (and `HEAD`) answers with the
//! text the caller's `render` gives, in the Prometheus text exposition
//! format (version 0.0.4); any other path is 404, any other method 405.
//! What the metrics are is each daemon's business (their `metrics`
//! modules); what they share is here: the registry they start from (the
//! `navette_` prefix and `navette_build_info`), its rendering, and binding
//! the listener ([`bind`], with the error an operator can act on).
//!
//! Invariants: the endpoint has no authentication and no TLS, so it must
//! carry nothing secret (no account names, no ids): the daemons' example
//! configurations keep it off, or on loopback. A slow or idle client cannot
//! hold the server: headers must arrive within [`HEADER_TIMEOUT`], a
//! connection lasts at most [`CONNECTION_LIFETIME`], and at most
//! [`MAX_CONNECTIONS`] are served at once (more are closed at once).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// A registry of `navette_` metrics holding `navette_build_info` with the
/// running build's `version` (always 1), described by `help`.
pub fn registry(help: &str, version: &'static str) -> Registry {
    let mut registry = Registry::with_prefix("navette");
    let build_info = Family::<[(&'static str, &'static str); 1], Gauge>::default();
    build_info.get_or_create(&[("version", version)]).set(1);
    registry.register("build_info", help, build_info);
    registry
}

/// `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut text, registry);
    text
}

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen for metrics on {address} ([metrics] listen): {source}; choose a free address, or remove the setting to turn metrics off"
)]
pub struct BindError {
    address: std::net::SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Listens on `address` (`[metrics] listen`).
pub async fn bind(address: std::net::SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| BindError { address, source })
}

/// The `Content-Type` of the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The one path served.
pub const PATH: &str = "/metrics";

/// A client must send its request headers within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection is closed after this, whatever it is doing.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Connections served at once; further ones are closed at once.
pub const MAX_CONNECTIONS: usize = 16;

/// Serves `GET /metrics` on `listener` until `shutdown` completes; each
/// scrape answers with what `render` returns.
pub async fn serve<R, F>(listener: TcpListener, render: R, shutdown: impl Future<Output = ()>)
where
    R: Fn() -> F + Clone + Send + Sync + 'static,
    F: Future<Output = String> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: wait a moment
                // rather than spinning.
                tracing::warn!(message = "accepting a metrics connection failed", %error);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(message = "too many metrics connections; closing a new one");
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let render = render.clone();
                async move { Ok::<_, Infallible>(answer(&request, render).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(error)) = tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                tracing::debug!(message = "metrics connection ended with an error", %error);
            }
            drop(permit);
        });
    }
}

/// The answer to one request.
async fn answer<B, R, F>(request: &Request<B>, render: R) -> Response<Full<Bytes>>
where
    R: Fn() -> F,
    F: Future<Output = String>,
{
    if request.uri().path() != PATH {
        return plain(
            StatusCode::NOT_FOUND,
            format!("not found: metrics are served at {PATH}\n"),
        );
    }
    let method = request.method();
    if method != Method::GET && method != Method::HEAD {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{PATH} answers GET and HEAD only\n"),
        );
        response.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return response;
    }
    let text = render().await;
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    response
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sends `request` as raw bytes and reads the whole answer.
    async fn exchange(address: std::net::SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connecting to the metrics listener");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("sending the request");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .await
            .expect("reading the answer");
        answer
    }

    #[tokio::test]
    async fn metrics_are_served_at_their_path_only() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
        let address = listener.local_addr().expect("local address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            || async { "navette_up 1\n".to_owned() },
            async {
                let _ = stopped.await;
            },
        ));
        let ok = exchange(
            address,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(CONTENT_TYPE), "{ok}");
        assert!(ok.ends_with("\r\n\r\nnavette_up 1\n"), "{ok}");
        let missing = exchange(
            address,
            "GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let posted = exchange(
            address,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(posted.starts_with("HTTP/1.1 405"), "{posted}");
        let _ = stop.send(());
        server.await.expect("the server stops when told");
    }
}
