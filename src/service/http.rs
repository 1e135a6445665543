//! The `--metrics HOST:PORT` endpoint: `GET /metrics` (Prometheus, OpenMetrics text) and
//! `GET /healthz` (200 while streaming, 503 with the reason otherwise, JSON either way).
//!
//! HTTP/1.1 only, through hyper's server connection: a scrape is one small request, and a
//! monitoring port needs no routing framework. The socket is bound before the receiver
//! starts, so a taken port is a startup error, not a warning lost in a log. A client that
//! stalls mid-request is cut off after [`HEADER_TIMEOUT`]; one that fails is logged and
//! forgotten: the endpoint never affects the receiver.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::metrics::Metrics;

/// How long a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("could not listen on {addr} for metrics: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl ServeError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ServeError::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse => {
                Some(
                    "another process uses that port; choose another with --metrics HOST:PORT"
                        .into(),
                )
            }
            ServeError::Bind { .. } => Some(
                "--metrics takes an address of this host and a free port, e.g. 127.0.0.1:9187"
                    .into(),
            ),
        }
    }
}

/// A bound endpoint, not yet answering.
pub struct MetricsServer {
    listener: TcpListener,
    metrics: Arc<Metrics>,
}

impl MetricsServer {
    pub async fn bind(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<Self, ServeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(MetricsServer { listener, metrics })
    }

    /// The address bound (with the port chosen, when asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answer requests until `shutdown` turns true (a dropped sender means never).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let stop = async move {
            if shutdown.wait_for(|stop| *stop).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(stop);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::warn!("metrics endpoint: could not accept a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut stop => return,
            };
            let metrics = Arc::clone(&self.metrics);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let response = respond(&req, &metrics);
                    async move { Ok::<_, Infallible>(response) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!("metrics endpoint: connection from {peer}: {e}");
                }
            });
        }
    }
}

/// Bind `addr` and answer `/metrics` and `/healthz` from `metrics` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    MetricsServer::bind(addr, metrics)
        .await?
        .run(shutdown)
        .await;
    Ok(())
}

fn respond(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match req.uri().path() {
        "/metrics" => with_type(StatusCode::OK, OPENMETRICS, metrics.encode()),
        "/healthz" => {
            let (healthy, body) = metrics.health_json();
            let status = if healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            with_type(status, "application/json", body + "\n")
        }
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /healthz\n",
        ),
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", text.to_string())
}

fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn answers_metrics_healthz_and_nothing_else() {
        let metrics = Metrics::new();
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap(), Arc::clone(&metrics))
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        let running = tokio::spawn(server.run(stopped));

        let close = "Host: x\r\nConnection: close\r\n\r\n";
        let out = get(addr, &format!("GET /metrics HTTP/1.1\r\n{close}")).await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(
            out.contains(&format!("content-type: {OPENMETRICS}\r\n")),
            "{out}"
        );
        assert!(out.contains("\nwalferry_flushed_lsn_bytes 0\n"), "{out}");

        let out = get(addr, &format!("GET /healthz HTTP/1.1\r\n{close}")).await;
        assert!(
            out.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{out}"
        );
        assert!(out.contains("\"status\":\"starting\""), "{out}");
        metrics.set_streaming();
        let out = get(addr, &format!("GET /healthz HTTP/1.1\r\n{close}")).await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("\"status\":\"streaming\""), "{out}");

        let out = get(addr, &format!("GET /other HTTP/1.1\r\n{close}")).await;
        assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out}");
        let out = get(
            addr,
            &format!("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n{close}"),
        )
        .await;
        assert!(
            out.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{out}"
        );
        assert!(out.contains("allow: GET, HEAD\r\n"), "{out}");

        stop.send(true).unwrap();
        running.await.unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "stopped listening"
        );
    }

    #[tokio::test]
    async fn a_taken_port_is_a_clear_startup_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let Err(e) = MetricsServer::bind(addr, Metrics::new()).await else {
            panic!("bound a taken port");
        };
        assert_eq!(
            e.to_string(),
            format!("could not listen on {addr} for metrics: Address already in use (os error 98)")
        );
        assert!(e.hint().unwrap().contains("another process"));
    }
}
