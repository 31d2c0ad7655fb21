//! Polyport's outbound webhooks: delivery of the durable outbox the store fills in the
//! same transaction as each event.
//!
//! | concern | file |
//! |---|---|
//! | per-endpoint workers, retries, backoff, disabling | `engine.rs` |
//! | secrets, retry schedule, definition checks (the Hub's `DeliveryPolicy`) | `policy.rs` |
//! | Standard Webhooks signing | `sign.rs` |
//! | SSRF guard (address policy, vetted resolver) | `ssrf.rs` |
//!
//! Written here rather than taken from a crate: no maintained Rust crate delivers
//! webhooks from a durable outbox; signing is a few lines of `hmac`/`sha2`.

mod engine;
mod policy;
mod sign;
pub mod ssrf;

use std::sync::Arc;
use std::time::Duration;

use polyport_core::Hub;
use tokio::sync::{Notify, Semaphore};

pub use policy::{DEFAULT_RETRY_SCHEDULE, new_secret, valid_secret};
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

/// Installs the delivery rules into the hub, so endpoints can be registered (and are
/// checked) on every face even while delivery itself is switched off.
pub fn install(hub: &Hub, cfg: &WebhookConfig) -> Result<Arc<ssrf::Policy>, WebhookError> {
    let policy = Arc::new(ssrf::Policy::new(&cfg.allow_networks, cfg.allow_public)?);
    hub.set_delivery_policy(Arc::new(policy::Rules(policy.clone())));
    Ok(policy)
}

/// [`install`]s the rules and starts delivering; runs until the hub shuts down.
pub fn start(hub: &Hub, cfg: WebhookConfig) -> Result<tokio::task::JoinHandle<()>, WebhookError> {
    let policy = install(hub, &cfg)?;
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
