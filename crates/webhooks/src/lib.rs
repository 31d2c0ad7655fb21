//! Polyport's outbound webhooks: delivery of the durable outbox the store fills in the
//! same transaction as each event.
//!
//! | concern | file |
//! |---|---|
//! | per-endpoint workers, retries, backoff, disabling | `engine.rs` |
//! | Standard Webhooks signing | `sign.rs` |
//! | SSRF guard (address policy, vetted resolver) | `ssrf.rs` |
//!
//! Written here rather than taken from a crate: no maintained Rust crate delivers
//! webhooks from a durable outbox; signing is a few lines of `hmac`/`sha2`.

mod engine;
mod sign;
pub mod ssrf;

use std::sync::Arc;
use std::time::Duration;

use polyport_core::Hub;
use tokio::sync::{Notify, Semaphore};

pub use sign::sign;

/// Delivery settings.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// A 2xx must arrive within this (default 15 s).
    pub timeout: Duration,
    /// Requests in flight across all endpoints.
    pub max_in_flight: usize,
    /// An endpoint failing this long is disabled (default 5 days).
    pub disable_after: Duration,
    /// Internal networks deliveries may reach anyway (e.g. `10.0.0.0/8`).
    pub allow_networks: Vec<String>,
    /// Whether public addresses are allowed (turn off to confine deliveries to
    /// `allow_networks`, e.g. in tests).
    pub allow_public: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(15),
            max_in_flight: 64,
            disable_after: Duration::from_secs(5 * 24 * 3600),
            allow_networks: Vec::new(),
            allow_public: true,
        }
    }
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A setting is invalid.
    #[error("webhooks: {0}")]
    Config(String),
    /// The HTTP client could not be built.
    #[error("webhooks: cannot build the HTTP client: {0}")]
    Client(String),
}

/// Installs the URL guard into the hub and starts delivering; runs until the hub shuts
/// down.
pub fn start(hub: &Hub, cfg: WebhookConfig) -> Result<tokio::task::JoinHandle<()>, WebhookError> {
    let policy = Arc::new(ssrf::Policy::new(&cfg.allow_networks, cfg.allow_public)?);
    hub.set_url_guard(Arc::new(ssrf::Guard(policy.clone())));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(ssrf::SafeResolver(policy.clone())))
        .connect_timeout(cfg.timeout)
        .user_agent(concat!("Polyport-Webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| WebhookError::Client(e.to_string()))?;
    let shared = Arc::new(engine::Shared {
        hub: hub.clone(),
        client,
        policy,
        in_flight: Semaphore::new(cfg.max_in_flight.max(1)),
        cfg,
        wake: Notify::new(),
    });
    Ok(tokio::spawn(engine::supervise(shared)))
}
