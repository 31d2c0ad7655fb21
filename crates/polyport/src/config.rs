//! Configuration: defaults < `polyport.toml` < `POLYPORT_*` environment < flags.
//!
//! Environment variables and flags are declared together on the clap arguments in
//! `main.rs`; this file holds the file format and the merge.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    pub(crate) data_dir: PathBuf,
    pub(crate) auto_create_collections: bool,
    /// Records kept in memory for reads by id (0: off).
    pub(crate) record_cache: usize,
    pub(crate) http: HttpSection,
    pub(crate) graphql: GraphqlSection,
    pub(crate) soap: SoapSection,
    pub(crate) grpc: GrpcSection,
    pub(crate) mqtt: MqttSection,
    pub(crate) amqp: AmqpSection,
    pub(crate) stomp: StompSection,
    pub(crate) webhooks: WebhooksSection,
    pub(crate) hooks: polyport_http::HooksConfig,
    pub(crate) events: EventsSection,
    pub(crate) auth: AuthSection,
    pub(crate) limits: LimitsSection,
    pub(crate) tls: TlsSection,
    pub(crate) cluster: ClusterSection,
}

/// The cluster engine (issue 16, being built; docs/cluster.md): with `store`, records, the
/// log and all state live in PostgreSQL instead of the data directory; with `bus`, the
/// node keeps a heartbeat in NATS JetStream KV and `GET /api/cluster` lists every node
/// alive. Events do not yet travel between nodes.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ClusterSection {
    /// `nats://host:port` of a JetStream-enabled NATS server.
    pub(crate) bus: Option<String>,
    /// `postgres://user@host:port/database`: the record store and log.
    pub(crate) store: Option<String>,
    /// The Postgres schema holding Polyport's tables (made when missing).
    pub(crate) schema: String,
    /// The KV bucket the nodes of one deployment share.
    pub(crate) bucket: String,
    pub(crate) heartbeat_ms: u64,
    /// How long a node stays listed after its last heartbeat.
    pub(crate) ttl_ms: u64,
    pub(crate) connect_timeout_ms: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        let d = polyport_cluster::ClusterConfig::new("");
        Self {
            bus: None,
            store: None,
            schema: "polyport".into(),
            bucket: d.bucket,
            heartbeat_ms: d.heartbeat.as_millis() as u64,
            ttl_ms: d.ttl.as_millis() as u64,
            connect_timeout_ms: d.connect_timeout.as_millis() as u64,
        }
    }
}

impl ClusterSection {
    /// The Postgres store's URL, when one is set.
    pub(crate) fn store_url(&self) -> Option<&str> {
        self.store.as_deref().filter(|s| !s.is_empty())
    }

    /// How to join, when a bus is configured.
    pub(crate) fn join_config(&self) -> Option<polyport_cluster::ClusterConfig> {
        let bus = self.bus.as_ref().filter(|b| !b.is_empty())?;
        let mut c = polyport_cluster::ClusterConfig::new(bus.clone());
        c.bucket = self.bucket.clone();
        c.heartbeat = std::time::Duration::from_millis(self.heartbeat_ms.max(50));
        c.ttl = std::time::Duration::from_millis(self.ttl_ms.max(self.heartbeat_ms * 2));
        c.connect_timeout = std::time::Duration::from_millis(self.connect_timeout_ms.max(100));
        Some(c)
    }
}

/// The certificate every face's TLS listener serves (`https`, `grpcs`, `mqtts`, `amqps`,
/// `stomps`), unless its own `[name.tls]` names another. With a certificate, each face
/// also listens with TLS; `SIGHUP` reloads the files without dropping connections.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TlsSection {
    /// PEM certificate chain.
    pub(crate) cert: Option<PathBuf>,
    /// PEM private key.
    pub(crate) key: Option<PathBuf>,
    /// PEM CA that signs client certificates (mTLS); a verified certificate's common name
    /// is the client's identity when it sends no credentials.
    pub(crate) client_ca: Option<PathBuf>,
    /// With `client_ca`: `"required"` (default) or `"optional"`.
    pub(crate) client_auth: Option<ClientAuth>,
    /// Serve only the TLS listeners of faces that have one (no plain-text listener).
    pub(crate) only: bool,
}

/// Whether a TLS listener with a client CA requires a client certificate.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ClientAuth {
    Required,
    Optional,
}

/// A face's TLS listener: where, and anything it serves differently from `[tls]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct FaceTls {
    /// `false` switches this face's TLS listener off even with a certificate.
    pub(crate) enabled: Option<bool>,
    /// `None`: the face's registered TLS port on loopback.
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) client_ca: Option<PathBuf>,
    pub(crate) client_auth: Option<ClientAuth>,
}

impl TlsSection {
    /// What the face's TLS listener serves, or `None` when it has none: no certificate
    /// here or in its own section, or switched off.
    pub(crate) fn for_face(
        &self,
        face: &str,
        own: &FaceTls,
        alpn: &[&str],
    ) -> anyhow::Result<Option<polyport_tls::TlsSettings>> {
        if own.enabled == Some(false) {
            return Ok(None);
        }
        let (cert, key) = match (&own.cert, &own.key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            (None, None) => match (&self.cert, &self.key) {
                (Some(c), Some(k)) => (c.clone(), k.clone()),
                (None, None) if own.enabled == Some(true) => anyhow::bail!(
                    "[{face}.tls] enabled = true needs a certificate: set `cert` and `key` \
                     there or in [tls] (or --tls-cert/--tls-key)"
                ),
                (None, None) => return Ok(None),
                _ => anyhow::bail!("[tls]: set both `cert` and `key`, or neither"),
            },
            _ => anyhow::bail!("[{face}.tls]: set both `cert` and `key`, or neither"),
        };
        let client_ca = own.client_ca.clone().or_else(|| self.client_ca.clone());
        let client_auth = match own.client_auth.or(self.client_auth) {
            Some(ClientAuth::Optional) => polyport_tls::ClientAuth::Optional,
            Some(ClientAuth::Required) | None => polyport_tls::ClientAuth::Required,
        };
        Ok(Some(polyport_tls::TlsSettings {
            cert,
            key,
            client_ca,
            client_auth,
            alpn: alpn.iter().map(|p| p.as_bytes().to_vec()).collect(),
        }))
    }
}

/// Who may connect: users in this file, users and API keys the server stores
/// (`polyport users|keys`), JWTs. With none of them, everyone is let in with every right
/// (loopback only unless `--allow-anonymous`); once any exists, anonymous callers are
/// refused unless `anonymous = true`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AuthSection {
    /// `alice = "s3cret"` or `root = { password_hash = "$argon2id$…", role = "admin" }`.
    pub(crate) users: std::collections::BTreeMap<String, polyport_core::auth::Secret>,
    /// Whether callers without credentials are let in (default: only while no identity
    /// source exists).
    pub(crate) anonymous: Option<bool>,
    /// Seconds a sign-in token (`POST /api/auth/token`) is good for.
    pub(crate) token_ttl_secs: u64,
    /// JWT verification.
    pub(crate) jwt: Option<polyport_core::auth::JwtConfig>,
    /// Topic ACLs (`[[auth.acl]]`); none: every topic for everyone let in.
    pub(crate) acl: Vec<polyport_core::auth::AclEntry>,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            users: Default::default(),
            anonymous: None,
            token_ttl_secs: 300,
            jwt: None,
            acl: Vec::new(),
        }
    }
}

impl AuthSection {
    /// The identity sources this section names, checked.
    pub(crate) fn directory(&self) -> anyhow::Result<polyport_core::auth::Directory> {
        use polyport_core::auth::{ConfigUser, Directory, DirectoryConfig};
        let cfg = DirectoryConfig {
            users: self
                .users
                .iter()
                .map(|(name, secret)| ConfigUser {
                    name: name.clone(),
                    secret: secret.clone(),
                })
                .collect(),
            anonymous: self.anonymous,
            jwt: self.jwt.clone(),
            token_ttl: Some(std::time::Duration::from_secs(self.token_ttl_secs.max(1))),
        };
        Directory::new(cfg).map_err(|e| anyhow::anyhow!("[auth]: {e}"))
    }

    /// The authorization policy: roles, scopes and the topic ACLs.
    pub(crate) fn policy(&self) -> anyhow::Result<polyport_core::auth::Roles> {
        use polyport_core::auth::{Acl, Roles};
        let acl = match self.acl.is_empty() {
            true => None,
            false => Some(Acl::new(self.acl.clone()).map_err(|e| anyhow::anyhow!("[auth] {e}"))?),
        };
        Ok(Roles::with_acl(acl))
    }
}

/// The MQTT broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct MqttSection {
    pub(crate) enabled: bool,
    /// `None`: the default address, which is skipped (loudly) when taken.
    pub(crate) listen: Option<SocketAddr>,
    /// Its TLS listener (`[name.tls]`).
    pub(crate) tls: FaceTls,
    pub(crate) max_packet_size: u32,
    pub(crate) receive_max: u16,
    /// Also log QoS 0 messages durably.
    pub(crate) durable_qos0: bool,
    /// Serve MQTT over WebSocket at `/mqtt` on the HTTP port.
    pub(crate) websocket: bool,
    /// Seconds between `$SYS/broker/…` updates (0: off).
    pub(crate) sys_interval_secs: u64,
    /// Messages buffered per subscription for a slow client (QoS 0 past it is dropped).
    pub(crate) max_queued_messages: usize,
    /// Longest keep-alive a client may use, seconds (0: any). MQTT 5 clients are told.
    pub(crate) max_keep_alive: u16,
    /// Subscriptions one connection may hold.
    pub(crate) max_subscriptions: usize,
}

impl Default for MqttSection {
    fn default() -> Self {
        let d = polyport_mqtt::MqttConfig::default();
        Self {
            enabled: true,
            listen: None,
            tls: FaceTls::default(),
            max_packet_size: d.max_packet_size,
            receive_max: d.receive_max,
            durable_qos0: d.durable_qos0,
            websocket: true,
            sys_interval_secs: d.sys_interval.as_secs(),
            max_queued_messages: d.max_queued_messages,
            max_keep_alive: d.max_keep_alive,
            max_subscriptions: d.max_subscriptions,
        }
    }
}

/// The AMQP 0-9-1 broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AmqpSection {
    pub(crate) enabled: bool,
    /// `None`: the default address, which is skipped (loudly) when taken.
    pub(crate) listen: Option<SocketAddr>,
    /// Its TLS listener (`[name.tls]`).
    pub(crate) tls: FaceTls,
    pub(crate) frame_max: u32,
    pub(crate) channel_max: u16,
    /// Seconds offered in `connection.tune` (0: off).
    pub(crate) heartbeat: u16,
    pub(crate) max_message: usize,
    /// Messages each queue reads ahead of its consumers.
    pub(crate) queue_window: usize,
    /// Consumers one connection may hold, over all its channels.
    pub(crate) max_consumers: usize,
}

/// The STOMP broker (on the same queues as AMQP).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct StompSection {
    pub(crate) enabled: bool,
    /// `None`: the default address, which is skipped (loudly) when taken.
    pub(crate) listen: Option<SocketAddr>,
    /// Its TLS listener (`[name.tls]`).
    pub(crate) tls: FaceTls,
    /// STOMP over WebSocket at `/stomp` on the HTTP listener.
    pub(crate) websocket: bool,
    /// Heart-beat interval offered both ways, ms (0: off).
    pub(crate) heartbeat_ms: u64,
    pub(crate) max_frame: usize,
    pub(crate) max_headers: usize,
    pub(crate) max_header_line: usize,
    /// Subscriptions one connection may hold.
    pub(crate) max_subscriptions: usize,
}

impl Default for StompSection {
    fn default() -> Self {
        let d = polyport_stomp::StompConfig::default();
        Self {
            enabled: true,
            listen: None,
            tls: FaceTls::default(),
            websocket: true,
            heartbeat_ms: d.heartbeat_ms,
            max_frame: d.limits.max_frame,
            max_headers: d.limits.max_headers,
            max_header_line: d.limits.max_header_line,
            max_subscriptions: d.max_subscriptions,
        }
    }
}

impl Default for AmqpSection {
    fn default() -> Self {
        let d = polyport_amqp::AmqpConfig::default();
        Self {
            enabled: true,
            listen: None,
            tls: FaceTls::default(),
            frame_max: d.frame_max,
            channel_max: d.channel_max,
            heartbeat: d.heartbeat,
            max_message: d.max_message,
            queue_window: 1024,
            max_consumers: d.max_consumers,
        }
    }
}

/// Outbound webhook delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct WebhooksSection {
    pub(crate) enabled: bool,
    pub(crate) timeout_secs: u64,
    pub(crate) max_in_flight: usize,
    pub(crate) disable_after_hours: u64,
    /// Internal networks deliveries may reach (SSRF allowlist), e.g. ["10.0.0.0/8"].
    pub(crate) allow_networks: Vec<String>,
    /// Allow public addresses (off confines deliveries to `allow_networks`).
    pub(crate) allow_public: bool,
}

impl Default for WebhooksSection {
    fn default() -> Self {
        let d = polyport_webhooks::WebhookConfig::default();
        Self {
            enabled: true,
            timeout_secs: d.timeout.as_secs(),
            max_in_flight: d.max_in_flight,
            disable_after_hours: d.disable_after.as_secs() / 3600,
            allow_networks: d.allow_networks,
            allow_public: d.allow_public,
        }
    }
}

/// gRPC on its own HTTP/2 port.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct GrpcSection {
    pub(crate) enabled: bool,
    /// `None`: the default address, which is skipped (loudly) when taken.
    pub(crate) listen: Option<SocketAddr>,
    /// Its TLS listener (`[name.tls]`).
    pub(crate) tls: FaceTls,
    pub(crate) max_message: usize,
}

impl Default for GrpcSection {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            tls: FaceTls::default(),
            max_message: polyport_grpc::GrpcConfig::default().max_message,
        }
    }
}

/// GraphQL at `/graphql` on the HTTP port.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct GraphqlSection {
    pub(crate) enabled: bool,
    pub(crate) introspection: bool,
    pub(crate) max_depth: usize,
    pub(crate) max_complexity: usize,
}

impl Default for GraphqlSection {
    fn default() -> Self {
        let d = polyport_graphql::GraphqlConfig::default();
        Self {
            enabled: true,
            introspection: d.introspection,
            max_depth: d.max_depth,
            max_complexity: d.max_complexity,
        }
    }
}

/// SOAP at `/soap` on the HTTP port.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct SoapSection {
    pub(crate) enabled: bool,
    pub(crate) max_depth: usize,
    pub(crate) max_elements: usize,
    pub(crate) max_attributes: usize,
}

impl Default for SoapSection {
    fn default() -> Self {
        let d = polyport_soap::xml::Limits::default();
        Self {
            enabled: true,
            max_depth: d.max_depth,
            max_elements: d.max_elements,
            max_attributes: d.max_attributes,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct HttpSection {
    pub(crate) enabled: bool,
    /// `None`: the default address, which is skipped (loudly) when taken.
    pub(crate) listen: Option<SocketAddr>,
    /// Its TLS listener (`[name.tls]`).
    pub(crate) tls: FaceTls,
    pub(crate) max_body: usize,
    pub(crate) max_page_size: usize,
    pub(crate) heartbeat_secs: u64,
    /// Origins browsers may call from; `["*"]` = any, `[]` = CORS off.
    pub(crate) cors_origins: Vec<String>,
    /// Subscriptions one `/ws` connection may hold.
    pub(crate) max_ws_subscriptions: usize,
}

/// Caps every listener applies to itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LimitsSection {
    /// Connections open at once on each listener.
    pub(crate) max_connections: usize,
    /// Connections open at once from one client address, on each listener.
    pub(crate) max_connections_per_address: usize,
    /// Seconds an HTTP client has to send a request's headers.
    pub(crate) http_header_timeout_secs: u64,
    /// Collections there may be before writes stop creating new ones by themselves.
    pub(crate) max_auto_collections: usize,
    /// Seconds a client of a TLS listener has to finish the handshake.
    pub(crate) tls_handshake_timeout_secs: u64,
    /// Requests per second one identity may make over all doors together; 0 = unlimited.
    pub(crate) requests_per_second: f64,
    /// Requests one identity may make at once above that rate (0: as many as one second's
    /// worth).
    pub(crate) request_burst: f64,
    /// Named groups (saved positions) one identity may create.
    pub(crate) max_groups_per_identity: usize,
    /// Topic filters in one subscription.
    pub(crate) max_filters_per_subscription: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let c = polyport_core::admission::ConnectionLimits::default();
        Self {
            max_connections: c.max_connections,
            max_connections_per_address: c.max_per_address,
            http_header_timeout_secs: 10,
            max_auto_collections: polyport_core::HubConfig::default().max_auto_collections,
            tls_handshake_timeout_secs: 10,
            requests_per_second: 0.0,
            request_burst: 0.0,
            max_groups_per_identity: polyport_core::HubConfig::default().max_groups_per_identity,
            max_filters_per_subscription: polyport_core::HubConfig::default()
                .max_filters_per_subscription,
        }
    }
}

impl LimitsSection {
    /// The per-identity request rate, if one is set.
    pub(crate) fn request_rate(&self) -> Option<polyport_core::rate::RateLimit> {
        (self.requests_per_second > 0.0).then(|| polyport_core::rate::RateLimit {
            per_second: self.requests_per_second,
            burst: match self.request_burst > 0.0 {
                true => self.request_burst,
                false => self.requests_per_second.max(1.0),
            },
        })
    }

    pub(crate) fn connections(&self) -> polyport_core::admission::ConnectionLimits {
        polyport_core::admission::ConnectionLimits {
            max_connections: self.max_connections.max(1),
            max_per_address: self.max_connections_per_address.max(1),
        }
    }

    /// The HTTP (or gRPC) listener's guards.
    pub(crate) fn http(&self, label: &'static str) -> polyport_http::ServeOptions {
        polyport_http::ServeOptions {
            label,
            connections: self.connections(),
            header_timeout: std::time::Duration::from_secs(self.http_header_timeout_secs.max(1)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct EventsSection {
    /// Keep at most this many events in the log.
    pub(crate) retention_max_events: Option<u64>,
    /// Drop events older than this many seconds.
    pub(crate) retention_max_age_secs: Option<u64>,
    /// Topic filters whose events are fanned out in memory only.
    pub(crate) ephemeral_topics: Vec<String>,
    /// Queue depth per subscriber before it is switched to replay.
    pub(crate) subscriber_queue: usize,
    /// Writes queued for the disk before publishers wait (AMQP clients are sent
    /// `connection.blocked` when it is nearly full).
    pub(crate) write_queue: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./polyport-data"),
            auto_create_collections: true,
            record_cache: 10_000,
            http: HttpSection::default(),
            graphql: GraphqlSection::default(),
            soap: SoapSection::default(),
            grpc: GrpcSection::default(),
            mqtt: MqttSection::default(),
            amqp: AmqpSection::default(),
            stomp: StompSection::default(),
            webhooks: WebhooksSection::default(),
            hooks: polyport_http::HooksConfig::default(),
            events: EventsSection::default(),
            auth: AuthSection::default(),
            limits: LimitsSection::default(),
            tls: TlsSection::default(),
            cluster: ClusterSection::default(),
        }
    }
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            tls: FaceTls::default(),
            max_body: 4 << 20,
            max_page_size: 1000,
            heartbeat_secs: 15,
            cors_origins: vec!["*".into()],
            max_ws_subscriptions: polyport_http::HttpConfig::default().max_ws_subscriptions,
        }
    }
}

impl Default for EventsSection {
    fn default() -> Self {
        Self {
            retention_max_events: None,
            retention_max_age_secs: None,
            ephemeral_topics: Vec::new(),
            subscriber_queue: 1024,
            write_queue: 8192,
        }
    }
}

impl Config {
    /// Reads `path`, or `./polyport.toml` when no path is given and it exists.
    pub(crate) fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from("polyport.toml"), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("invalid configuration in {}", path.display())),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file_and_rejects_typos() {
        let c: Config = toml::from_str(
            r#"
            data_dir = "/tmp/x"
            [http]
            listen = "0.0.0.0:9000"
            [events]
            retention_max_events = 100
            ephemeral_topics = ["telemetry/#"]
            "#,
        )
        .expect("valid config");
        assert_eq!(c.http.listen.map(|a| a.port()), Some(9000));
        assert_eq!(
            c.grpc.listen, None,
            "not given: the default, skipped when taken"
        );
        assert_eq!(c.events.retention_max_events, Some(100));
        assert!(toml::from_str::<Config>("[http]\nlisten_addr = \"x\"").is_err());
    }
}
