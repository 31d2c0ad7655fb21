//! What a protocol crate tells `polyport serve` about itself.
//!
//! Each protocol crate exports one [`Spec`]. The server walks one list of them: it
//! binds each listener (a taken *default* port skips that face, a port the user chose
//! stops start-up), writes `listeners.json`, starts the faces and drains them on
//! shutdown. A spec's `name` is the contract with the user: it is the `[name]` section
//! of `polyport.toml`, the `--name` flag, the `POLYPORT_NAME` variable and the key in
//! `listeners.json` — so a new protocol gets all four by existing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// One face of the server.
#[derive(Debug)]
pub struct Spec {
    /// Lowercase, no spaces: section, flag, variable suffix and `listeners.json` key.
    pub name: &'static str,
    /// As printed in logs and errors (`MQTT`, `gRPC`).
    pub label: &'static str,
    /// One line on what clients find there.
    pub about: &'static str,
    /// Where its own listener goes by default; `None` for a face mounted on the
    /// HTTP listener (GraphQL, SOAP).
    pub default_addr: Option<SocketAddr>,
}

impl Spec {
    /// The environment variable that sets this face's listen address.
    pub fn env_var(&self) -> String {
        format!("POLYPORT_{}", self.name.to_ascii_uppercase())
    }
}

/// Sleeps until `deadline`, or forever without one: a `select!` arm for an optional
/// timer (keep-alive, heart-beats, redelivery).
pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A loopback address: every default binds loopback only, like Mosquitto 2.
pub const fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// How long a connection over a cap gets to hear its refusal in its protocol's words.
const REFUSAL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The accept loop every TCP face shares: each connection (with `TCP_NODELAY`) is
/// admitted against `admission`'s caps and runs `serve(stream, None)` on `tracker`, holding
/// its place until it ends; a connection over a cap runs `serve(stream, Some(refusal))`,
/// which answers it in the protocol's words, within a short deadline. Stops at `stop` or
/// `shutdown`, then waits for the connections to finish. An accept error (out of
/// descriptors, say) backs off instead of spinning.
pub async fn accept_loop<F, Fut>(
    listener: tokio::net::TcpListener,
    stop: tokio_util::sync::CancellationToken,
    shutdown: tokio_util::sync::CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
    admission: &std::sync::Arc<crate::admission::Admission>,
    mut serve: F,
) where
    F: FnMut(tokio::net::TcpStream, Option<crate::admission::Refusal>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => break,
            _ = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                match admission.admit(peer.ip()) {
                    Ok(permit) => {
                        let conn = serve(stream, None);
                        tracker.spawn(async move {
                            let _place = permit;
                            conn.await
                        });
                    }
                    Err(refusal) => {
                        // Past a bound of refusals in flight, close without an answer.
                        if let Some(slot) = admission.answer_slot() {
                            let answer = serve(stream, Some(refusal));
                            tracker.spawn(async move {
                                let _slot = slot;
                                let _ = tokio::time::timeout(REFUSAL_DEADLINE, answer).await;
                            });
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "{} accept failed", admission.label());
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    tracker.close();
    tracker.wait().await;
}
