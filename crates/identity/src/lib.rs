//! Who a credential names, decided once for every protocol.
//!
//! Every adapter hands what its wire carries (HTTP `Authorization`, gRPC metadata, MQTT
//! username/password, AMQP PLAIN, STOMP login/passcode, SOAP UsernameToken) to one
//! [`Directory`] as [`Credentials`], and gets back the same [`Identity`] whichever door
//! it came through. Three kinds of identity source:
//!
//! - **Users** with argon2id-hashed passwords (the OWASP parameters `argon2`'s defaults
//!   are), from the configuration file or stored by the server.
//! - **API keys** `ppk_<id>_<secret>`: 256 random bits, stored as SHA-256 (a key has
//!   enough entropy that a slow hash buys nothing), shown once, with a role, optional
//!   scopes and an expiry, revocable.
//! - **JWTs** (HS256, RS256, ES256) checked against keys from the configuration or a
//!   JWKS, with `iss`/`aud`/`exp`/`nbf` and clock skew; the claims travel with the
//!   identity.
//!
//! An API key or a JWT is accepted wherever a password is (the username is then only a
//! label), so clients that know only username/password — most MQTT, AMQP and STOMP
//! libraries — can use them.
//!
//! argon2 costs tens of milliseconds by design, and HTTP Basic sends the password on
//! every request: a successful check is remembered (keyed by an HMAC of the credentials
//! under a per-process key, so the cache holds no password) until a user changes.
//!
//! Nothing here does I/O: the Hub persists stored users and keys and feeds them in.

mod directory;
mod jwt;
mod keys;
mod password;
mod token;

pub use directory::{ConfigUser, Directory, DirectoryConfig, Secret};
pub use jwt::{JwkSet, JwtConfig};
pub use keys::{KeySpec, KeyView, MintedKey, StoredKey};
pub use password::{hash_password, verify_password};

use serde::{Deserialize, Serialize};

/// What a user or key may do beyond the records and topics rules open to everyone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including collection and schema changes, webhook endpoints, users
    /// and keys.
    Admin,
    /// Records and topics; no administration.
    #[default]
    User,
}

/// A class of action an API key (or a JWT, when configured) may be narrowed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read records.
    Read,
    /// Create, update and delete records.
    Write,
    /// Publish on topics.
    Publish,
    /// Subscribe to topics and record changes.
    Subscribe,
    /// Administration (needs the admin role too).
    Admin,
}

impl Scope {
    /// Parses one scope name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "read" => Self::Read,
            "write" => Self::Write,
            "publish" => Self::Publish,
            "subscribe" => Self::Subscribe,
            "admin" => Self::Admin,
            _ => return None,
        })
    }
}

/// How an identity was established.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "id")]
pub enum Via {
    /// A user's password.
    Password,
    /// An API key (its id).
    ApiKey(String),
    /// A JWT.
    Jwt,
    /// A client certificate verified by a TLS listener.
    Certificate,
    /// No identity source is configured: everyone is let in with every right (loopback
    /// only, unless `--allow-anonymous`).
    Open,
    /// The server acting on its own behalf (seeding, delivering webhooks).
    System,
}

/// Who is calling, whatever the protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// The user name, a JWT's subject, or `key:<id>` for a key that acts as nobody.
    pub id: String,
    /// What it may administer.
    pub role: Role,
    /// How it was established.
    pub via: Via,
    /// `None`: every action its role allows; `Some`: only these classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<Scope>>,
    /// A JWT's claims (empty otherwise), for rules to read.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl Identity {
    /// The server itself.
    pub fn system() -> Self {
        Self {
            id: "system".into(),
            role: Role::Admin,
            via: Via::System,
            scopes: None,
            claims: Default::default(),
        }
    }

    /// Whether it may administer.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin && self.allows(Scope::Admin)
    }

    /// Whether its scopes (if any) include `scope`.
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.as_ref().is_none_or(|s| s.contains(&scope))
    }
}

/// What a client presented.
#[derive(Clone, Copy, Debug)]
pub enum Credentials<'a> {
    /// Nothing.
    None,
    /// A username and a password — which may also be an API key or a JWT.
    Password {
        /// The username (a label only when the password is a key or a JWT).
        username: &'a str,
        /// The password, API key or JWT.
        password: &'a [u8],
    },
    /// A bearer token: an API key or a JWT.
    Bearer(&'a str),
    /// The subject (common name) of a client certificate the TLS listener verified
    /// against its `client_ca`: the CA is the authority, as with Mosquitto's
    /// `use_identity_as_username`.
    Certificate(&'a str),
}

/// Why credentials were refused. The texts are safe to show the client: they never say
/// whether a user exists.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No credentials, and anonymous callers are not let in.
    #[error("credentials required")]
    Required,
    /// Wrong username or password.
    #[error("bad username or password")]
    BadPassword,
    /// An API key that is unknown, malformed, revoked or expired.
    #[error("the API key is not valid: {0}")]
    BadKey(&'static str),
    /// A JWT that failed a check.
    #[error("the token is not valid: {0}")]
    BadToken(String),
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// A user as the server stores it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StoredUser {
    /// Login name.
    pub name: String,
    /// PHC string of the argon2id hash.
    pub password_hash: String,
    /// What it may administer.
    pub role: Role,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub updated_at: u64,
}

/// A user as shown to admins (never the hash).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct UserView {
    /// Login name.
    pub name: String,
    /// What it may administer.
    pub role: Role,
    /// `config` (from polyport.toml, read-only here) or `stored`.
    pub source: &'static str,
    /// Unix seconds, for stored users.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<u64>,
    /// Unix seconds, for stored users.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<u64>,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Compares without an early exit, so timing does not reveal the matching prefix.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
