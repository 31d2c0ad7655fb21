//! The HTTP listener's own accept loop over hyper-util, instead of `axum::serve`, for
//! what that one does not do: connection caps per listener and per client address (a
//! connection over a cap gets a 503 problem and is closed), and a deadline for a request's
//! headers, so a client trickling bytes (slowloris) cannot hold a connection open. HTTP/1.1
//! with upgrades (WebSocket) and HTTP/2 (h2c, for gRPC) are served alike.
//!
//! hyper's header timeout starts at a request's first byte; a connection that never sends
//! one is closed by [`FirstByte`] after the same deadline, so silent sockets cannot hold
//! the per-address cap either.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use polyport_core::adapter::Listener;
use polyport_core::admission::{Admission, ConnectionLimits, Refusal};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// How an HTTP listener guards itself.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// The listener's name in logs and metrics (`HTTP`, `gRPC`).
    pub label: &'static str,
    /// Caps on open connections.
    pub connections: ConnectionLimits,
    /// Time a client has to send a request's headers (each request, keep-alive included).
    pub header_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            label: "HTTP",
            connections: ConnectionLimits::default(),
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// How long shutdown waits for in-flight requests and streams.
const DRAIN: Duration = Duration::from_secs(10);
/// How long a refused connection gets to read its 503.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `shutdown` fires, then drains in-flight requests.
/// Each request carries the connection's [`Peer`](polyport_core::adapter::Peer) as an extension (the client
/// certificate a TLS listener verified names the caller).
pub async fn serve(
    listener: impl Into<Listener>,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, app, shutdown, ServeOptions::default()).await
}

/// [`serve`] with explicit caps and deadlines.
pub async fn serve_with(
    listener: impl Into<Listener>,
    app: Router,
    shutdown: CancellationToken,
    opts: ServeOptions,
) -> std::io::Result<()> {
    let admission = Admission::new(opts.label, opts.connections);
    let (listener, securer) = listener.into().into_parts();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let connections = tokio_util::task::TaskTracker::new();
    let label = opts.label;
    let header_timeout = opts.header_timeout;
    loop {
        let (stream, addr) = tokio::select! {
            a = polyport_core::adapter::accept(&listener) => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "{label} accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let (b, securer) = (builder.clone(), securer.clone());
        match admission.admit(addr.ip()) {
            Ok(permit) => {
                let (app, stop) = (app.clone(), shutdown.clone());
                connections.spawn(async move {
                    let _place = permit;
                    let Some((io, peer)) = securer.secure(label, stream, addr).await else {
                        return;
                    };
                    let app =
                        app.map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
                            req.extensions_mut().insert(peer.clone());
                            req
                        });
                    let (io, spoke) = FirstByte::new(io);
                    let conn = b
                        .serve_connection_with_upgrades(
                            TokioIo::new(io),
                            TowerToHyperService::new(app),
                        )
                        .into_owned();
                    tokio::pin!(conn);
                    let ended = tokio::select! {
                        r = conn.as_mut() => r,
                        () = silent_for(&spoke, header_timeout) => {
                            metrics::counter!("polyport_connections_timed_out_total", "listener" => label, "reason" => "silent").increment(1);
                            tracing::debug!(%addr, "{label} connection sent nothing; closed");
                            return;
                        }
                        _ = stop.cancelled() => {
                            // Finish the requests in flight, take no more.
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "{label} connection ended with an error");
                    }
                });
            }
            Err(why) => {
                let Some(slot) = admission.answer_slot() else {
                    continue;
                };
                tokio::spawn(async move {
                    let _slot = slot;
                    let answer = async {
                        let Some((io, _)) = securer.secure(label, stream, addr).await else {
                            return;
                        };
                        let svc = hyper::service::service_fn(move |_req| async move {
                            Ok::<_, std::convert::Infallible>(too_many(why))
                        });
                        let _ = b.serve_connection(TokioIo::new(io), svc).await;
                    };
                    let _ = tokio::time::timeout(REFUSAL_DEADLINE, answer).await;
                });
            }
        }
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(DRAIN, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "{}: connections still open after {DRAIN:?}; closing",
            opts.label
        );
    }
    Ok(())
}

/// The 503 a connection over a cap gets, as a problem document, then the connection closes.
fn too_many(why: Refusal) -> Response<Body> {
    let body = serde_json::json!({
        "type": "urn:polyport:problem:too_many_connections",
        "title": "Service Unavailable",
        "status": 503,
        "code": "too_many_connections",
        "detail": why.to_string(),
    });
    let mut res = Response::new(Body::from(body.to_string()));
    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/problem+json"),
    );
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    h.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    res
}

/// Completes once `timeout` has passed without the connection sending a byte; never, once
/// it has.
async fn silent_for(spoke: &AtomicBool, timeout: Duration) {
    tokio::time::sleep(timeout).await;
    if spoke.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}

/// A connection that notes when the client first sends something.
struct FirstByte<S> {
    inner: S,
    spoke: Arc<AtomicBool>,
}

impl<S> FirstByte<S> {
    fn new(inner: S) -> (Self, Arc<AtomicBool>) {
        let spoke = Arc::new(AtomicBool::new(false));
        (
            Self {
                inner,
                spoke: spoke.clone(),
            },
            spoke,
        )
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstByte<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.spoke.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstByte<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
