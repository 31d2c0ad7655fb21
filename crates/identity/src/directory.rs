//! The one place credentials are checked.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use sha2::Sha256;

use crate::jwt::{Verifier, looks_like_jwt};
use crate::keys::{self, KeyView, StoredKey, looks_like_key};
use crate::password::{check_hash, verify_password};
use crate::token::{self, Tokens};
use crate::{
    AuthError, ConfigError, Credentials, Identity, JwkSet, JwtConfig, Role, StoredUser, UserView,
    Via, constant_time_eq, unix_now,
};

/// A password in the configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Secret {
    /// `alice = "s3cret"`: the password itself (handy on a laptop; prefer a hash).
    Plain(String),
    /// `alice = { password_hash = "$argon2id$…", role = "admin" }`.
    Hashed {
        /// PHC string of an argon2id hash.
        #[serde(default)]
        password_hash: Option<String>,
        /// The password itself, when there is a role to give but no hash.
        #[serde(default)]
        password: Option<String>,
        /// Role; default `user`.
        #[serde(default)]
        role: Role,
    },
}

/// A user from the configuration file.
#[derive(Clone, Debug)]
pub struct ConfigUser {
    /// Login name.
    pub name: String,
    /// Its password.
    pub secret: Secret,
}

/// What identity sources there are.
#[derive(Clone, Debug, Default)]
pub struct DirectoryConfig {
    /// Users from the configuration file.
    pub users: Vec<ConfigUser>,
    /// `None`: anonymous callers are let in only while there is no identity source.
    pub anonymous: Option<bool>,
    /// JWT verification.
    pub jwt: Option<JwtConfig>,
    /// How long a sign-in token lasts (`None`: 5 minutes).
    pub token_ttl: Option<Duration>,
}

enum Check {
    Plain(String),
    Hash(String),
}

struct Known {
    check: Check,
    role: Role,
}

#[derive(Default)]
struct Stored {
    users: HashMap<String, StoredUser>,
    keys: HashMap<String, StoredKey>,
}

/// Remembered successes: HMAC(credentials) → identity, good while no user or key has
/// changed since, and (for a JWT) until it expires.
struct Cache {
    entries: HashMap<[u8; 32], (Arc<Identity>, u64, Option<u64>)>,
    cleared: Instant,
}

const CACHE_CAP: usize = 10_000;
const CACHE_TTL: Duration = Duration::from_secs(600);
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);

/// Users, keys and JWT keys, checked for every protocol alike.
pub struct Directory {
    config: HashMap<String, Known>,
    stored: RwLock<Stored>,
    jwt: Option<Verifier>,
    anonymous: Option<bool>,
    generation: AtomicU64,
    cache_key: [u8; 32],
    cache: Mutex<Cache>,
    tokens: Tokens,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("config_users", &self.config.len())
            .field("jwt", &self.jwt.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Directory {
    fn default() -> Self {
        Self::open()
    }
}

/// Who a caller is on a server with no identity source: named as it says, every right.
fn open_identity(id: &str) -> Identity {
    Identity {
        id: id.to_string(),
        role: Role::Admin,
        via: Via::Open,
        scopes: None,
        claims: Default::default(),
    }
}

static OPEN_ANONYMOUS: std::sync::LazyLock<Arc<Identity>> =
    std::sync::LazyLock::new(|| Arc::new(open_identity("anonymous")));

impl Directory {
    /// No identity source: everyone is let in with every right.
    pub fn open() -> Self {
        Self::build(HashMap::new(), None, None, DEFAULT_TOKEN_TTL)
    }

    fn build(
        config: HashMap<String, Known>,
        jwt: Option<Verifier>,
        anonymous: Option<bool>,
        token_ttl: Duration,
    ) -> Self {
        Self {
            tokens: Tokens::new(token_ttl),
            config,
            stored: RwLock::default(),
            jwt,
            anonymous,
            generation: AtomicU64::new(0),
            cache_key: rand::random(),
            cache: Mutex::new(Cache {
                entries: HashMap::new(),
                cleared: Instant::now(),
            }),
        }
    }

    /// Checks the configuration (hash formats, JWT keys) and builds the directory.
    pub fn new(cfg: DirectoryConfig) -> Result<Self, ConfigError> {
        let mut config = HashMap::new();
        for u in cfg.users {
            let known = match u.secret {
                Secret::Plain(p) => Known {
                    check: Check::Plain(p),
                    role: Role::User,
                },
                Secret::Hashed {
                    password_hash: Some(h),
                    password: None,
                    role,
                } => {
                    check_hash(&h)
                        .map_err(|e| ConfigError(format!("auth.users.{}: {e}", u.name)))?;
                    Known {
                        check: Check::Hash(h),
                        role,
                    }
                }
                Secret::Hashed {
                    password_hash: None,
                    password: Some(p),
                    role,
                } => Known {
                    check: Check::Plain(p),
                    role,
                },
                Secret::Hashed { .. } => {
                    return Err(ConfigError(format!(
                        "auth.users.{}: give exactly one of password_hash and password",
                        u.name
                    )));
                }
            };
            config.insert(u.name, known);
        }
        let jwt = cfg.jwt.map(Verifier::new).transpose()?;
        Ok(Self::build(
            config,
            jwt,
            cfg.anonymous,
            cfg.token_ttl.unwrap_or(DEFAULT_TOKEN_TTL),
        ))
    }

    /// Whether there is any user, key or JWT key to check credentials against.
    pub fn has_sources(&self) -> bool {
        let s = self.stored.read();
        !self.config.is_empty() || self.jwt.is_some() || !s.users.is_empty() || !s.keys.is_empty()
    }

    /// Whether callers without credentials are let in.
    pub fn anonymous_allowed(&self) -> bool {
        self.anonymous.unwrap_or_else(|| !self.has_sources())
    }

    /// Whether everyone is let in with every right (no identity source at all).
    pub fn is_open(&self) -> bool {
        !self.has_sources() && self.anonymous != Some(false)
    }

    /// The JWT settings, for the server to fetch a JWKS URL.
    pub fn jwt_config(&self) -> Option<&JwtConfig> {
        self.jwt.as_ref().map(Verifier::config)
    }

    /// Whether `[auth.jwt] jwks_url` is set and its keys have never been fetched: tokens
    /// its keys signed are refused until they arrive, so the server is not ready.
    pub fn awaiting_jwks(&self) -> bool {
        self.jwt.as_ref().is_some_and(Verifier::awaiting_jwks)
    }

    /// Replaces the keys fetched from the JWKS URL.
    pub fn set_jwks(&self, set: &JwkSet) {
        if let Some(v) = &self.jwt {
            v.set_jwks(set);
            self.changed();
        }
    }

    /// Who the credentials name: `Ok(None)` for a let-in anonymous caller.
    pub fn authenticate(&self, creds: Credentials<'_>) -> Result<Option<Arc<Identity>>, AuthError> {
        if self.is_open() {
            // Nothing to check against: a username is taken as given (MQTT client ids
            // and ACL-free brokers rely on it), with every right.
            let id = match creds {
                Credentials::Password { username, .. } if !username.is_empty() => username,
                Credentials::Certificate(subject) => subject,
                // One identity shared by every nameless caller: an open broker with
                // many idle devices does not keep a copy per connection.
                _ => return Ok(Some(OPEN_ANONYMOUS.clone())),
            };
            return Ok(Some(Arc::new(open_identity(id))));
        }
        match creds {
            Credentials::None => match self.anonymous_allowed() {
                true => Ok(None),
                false => Err(AuthError::Required),
            },
            Credentials::Bearer(t) => self.token(t.as_bytes()),
            Credentials::Certificate(subject) => Ok(Some(self.certificate(subject))),
            Credentials::Password { password, .. }
                if looks_like_key(password)
                    || password.starts_with(token::PREFIX.as_bytes())
                    || (self.jwt.is_some() && looks_like_jwt(password)) =>
            {
                self.token(password)
            }
            Credentials::Password { username, password } => self.password(username, password),
        }
    }

    /// A sign-in token for `identity`, and when it expires (Unix seconds).
    pub fn issue_token(&self, identity: &Identity) -> (String, u64) {
        self.tokens.issue(identity)
    }

    /// How long sign-in tokens last.
    pub fn token_ttl(&self) -> Duration {
        self.tokens.ttl
    }

    fn token(&self, t: &[u8]) -> Result<Option<Arc<Identity>>, AuthError> {
        let t = std::str::from_utf8(t).map_err(|_| AuthError::BadKey("not UTF-8"))?;
        if t.starts_with(token::PREFIX) {
            return self.tokens.verify(t).map(|i| Some(Arc::new(i)));
        }
        if looks_like_key(t.as_bytes()) {
            return self.key(t).map(Some);
        }
        let Some(v) = &self.jwt else {
            return Err(AuthError::BadToken(
                "neither an API key nor a JWT this server is configured to check".into(),
            ));
        };
        let mark = self.mark(b"jwt", t.as_bytes(), b"");
        if let Some(hit) = self.cached(&mark) {
            return Ok(Some(hit));
        }
        let (identity, exp) = v.verify(t)?;
        Ok(Some(self.remember(mark, identity, exp)))
    }

    /// A verified certificate names a user: a configured or stored one of that name keeps
    /// its role, anyone else the CA vouches for is a plain user.
    fn certificate(&self, subject: &str) -> Arc<Identity> {
        let role = match self.config.get(subject) {
            Some(u) => Some(u.role),
            None => self.stored.read().users.get(subject).map(|u| u.role),
        };
        Arc::new(Identity {
            id: subject.to_string(),
            role: role.unwrap_or(Role::User),
            via: Via::Certificate,
            scopes: None,
            claims: Default::default(),
        })
    }

    fn key(&self, presented: &str) -> Result<Arc<Identity>, AuthError> {
        let (id, secret) = keys::split(presented).ok_or(AuthError::BadKey("malformed"))?;
        let s = self.stored.read();
        let k = s
            .keys
            .get(id)
            .ok_or(AuthError::BadKey("unknown or revoked"))?;
        if !constant_time_eq(keys::digest(secret).as_bytes(), k.secret_sha256.as_bytes()) {
            return Err(AuthError::BadKey("unknown or revoked"));
        }
        // Whole seconds: expired once the second after `expires_at` begins, so a key
        // minted with `expires_in: n` works for at least n seconds (with `<=`, one minted
        // late in a second could be refused the moment after: `expires_in: 1` lived
        // anywhere from a millisecond to a second).
        if k.expires_at.is_some_and(|e| e < unix_now()) {
            return Err(AuthError::BadKey("expired"));
        }
        Ok(Arc::new(Identity {
            id: k.user.clone().unwrap_or_else(|| format!("key:{}", k.id)),
            role: k.role,
            via: Via::ApiKey(k.id.clone()),
            scopes: k.scopes.clone(),
            claims: Default::default(),
        }))
    }

    fn password(&self, user: &str, password: &[u8]) -> Result<Option<Arc<Identity>>, AuthError> {
        let mark = self.mark(b"pw", user.as_bytes(), password);
        if let Some(hit) = self.cached(&mark) {
            return Ok(Some(hit));
        }
        let role = if let Some(k) = self.config.get(user) {
            let ok = match &k.check {
                Check::Plain(p) => constant_time_eq(p.as_bytes(), password),
                Check::Hash(h) => verify_password(h, password),
            };
            ok.then_some(k.role)
        } else {
            let hash = self
                .stored
                .read()
                .users
                .get(user)
                .map(|u| (u.password_hash.clone(), u.role));
            match hash {
                Some((h, role)) => verify_password(&h, password).then_some(role),
                None => {
                    // As slow as a real check, so timing does not tell who exists.
                    let _ = verify_password(DUMMY_HASH, password);
                    None
                }
            }
        };
        let role = role.ok_or(AuthError::BadPassword)?;
        let identity = Identity {
            id: user.to_string(),
            role,
            via: Via::Password,
            scopes: None,
            claims: Default::default(),
        };
        Ok(Some(self.remember(mark, identity, None)))
    }

    fn mark(&self, kind: &[u8], a: &[u8], b: &[u8]) -> [u8; 32] {
        // HMAC accepts any key length: `new_from_slice` cannot fail.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.cache_key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        for part in [kind, a, b] {
            m.update(&(part.len() as u64).to_be_bytes());
            m.update(part);
        }
        m.finalize().into_bytes().into()
    }

    fn cached(&self, mark: &[u8; 32]) -> Option<Arc<Identity>> {
        let g = self.generation.load(Ordering::Acquire);
        let c = self.cache.lock();
        let (identity, at, exp) = c.entries.get(mark)?;
        (*at == g && exp.is_none_or(|e| e > unix_now())).then(|| identity.clone())
    }

    fn remember(&self, mark: [u8; 32], identity: Identity, exp: Option<u64>) -> Arc<Identity> {
        let identity = Arc::new(identity);
        let g = self.generation.load(Ordering::Acquire);
        let mut c = self.cache.lock();
        if c.entries.len() >= CACHE_CAP || c.cleared.elapsed() > CACHE_TTL {
            c.entries.clear();
            c.cleared = Instant::now();
        }
        c.entries.insert(mark, (identity.clone(), g, exp));
        identity
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    // ----- stored users and keys (the Hub persists them first) -----

    /// Replaces everything stored (at start).
    pub fn load(&self, users: Vec<StoredUser>, keys: Vec<StoredKey>) {
        let mut s = self.stored.write();
        s.users = users.into_iter().map(|u| (u.name.clone(), u)).collect();
        s.keys = keys.into_iter().map(|k| (k.id.clone(), k)).collect();
        drop(s);
        self.changed();
    }

    /// Whether `name` is a user of the configuration file (which the server cannot change).
    pub fn is_config_user(&self, name: &str) -> bool {
        self.config.contains_key(name)
    }

    /// A stored user, if any.
    pub fn stored_user(&self, name: &str) -> Option<StoredUser> {
        self.stored.read().users.get(name).cloned()
    }

    /// Adds or replaces a stored user.
    pub fn put_user(&self, user: StoredUser) {
        self.stored.write().users.insert(user.name.clone(), user);
        self.changed();
    }

    /// Removes a stored user; whether there was one.
    pub fn remove_user(&self, name: &str) -> bool {
        let had = self.stored.write().users.remove(name).is_some();
        self.changed();
        had
    }

    /// Adds a key.
    pub fn put_key(&self, key: StoredKey) {
        self.stored.write().keys.insert(key.id.clone(), key);
        self.changed();
    }

    /// Removes a key; whether there was one.
    pub fn remove_key(&self, id: &str) -> bool {
        let had = self.stored.write().keys.remove(id).is_some();
        self.changed();
        had
    }

    /// Every user, configured and stored, by name.
    pub fn users(&self) -> Vec<UserView> {
        let mut out: Vec<UserView> = self
            .config
            .iter()
            .map(|(name, k)| UserView {
                name: name.clone(),
                role: k.role,
                source: "config",
                created_at: None,
                updated_at: None,
            })
            .collect();
        out.extend(self.stored.read().users.values().map(|u| UserView {
            name: u.name.clone(),
            role: u.role,
            source: "stored",
            created_at: Some(u.created_at),
            updated_at: Some(u.updated_at),
        }));
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Every key, newest first.
    pub fn keys(&self) -> Vec<KeyView> {
        let mut out: Vec<KeyView> = self
            .stored
            .read()
            .keys
            .values()
            .map(KeyView::from)
            .collect();
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        out
    }
}

/// A real argon2id hash of nothing anyone knows, checked for unknown users.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$wJ5o1oQ0wS4pMcMsZb4w0kGq1kqRrbvHq5yZ3Zr3Zqo";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeySpec, Scope, hash_password};

    fn locked() -> Directory {
        Directory::new(DirectoryConfig {
            users: vec![
                ConfigUser {
                    name: "alice".into(),
                    secret: Secret::Plain("s3cret".into()),
                },
                ConfigUser {
                    name: "root".into(),
                    secret: Secret::Hashed {
                        password_hash: Some(hash_password("toor").unwrap()),
                        password: None,
                        role: Role::Admin,
                    },
                },
            ],
            ..Default::default()
        })
        .unwrap()
    }

    fn pw<'a>(u: &'a str, p: &'a str) -> Credentials<'a> {
        Credentials::Password {
            username: u,
            password: p.as_bytes(),
        }
    }

    #[test]
    fn open_until_a_source_exists_then_anonymous_is_refused() {
        let d = Directory::open();
        let who = d.authenticate(pw("bob", "")).unwrap().unwrap();
        assert_eq!(
            (who.id.as_str(), who.role, &who.via),
            ("bob", Role::Admin, &Via::Open)
        );
        let d = locked();
        assert!(!d.is_open());
        assert_eq!(d.authenticate(Credentials::None), Err(AuthError::Required));
        let with_anon = Directory::new(DirectoryConfig {
            anonymous: Some(true),
            ..Default::default()
        })
        .unwrap();
        assert!(with_anon.is_open());
    }

    #[test]
    fn a_verified_certificate_names_a_user_with_that_users_role() {
        let d = locked();
        let root = d
            .authenticate(Credentials::Certificate("root"))
            .unwrap()
            .unwrap();
        assert_eq!((root.role, &root.via), (Role::Admin, &Via::Certificate));
        let carol = d
            .authenticate(Credentials::Certificate("carol"))
            .unwrap()
            .unwrap();
        assert_eq!((carol.id.as_str(), carol.role), ("carol", Role::User));
    }

    #[test]
    fn passwords_roles_and_the_cache_follow_changes() {
        let d = locked();
        assert_eq!(
            d.authenticate(pw("alice", "s3cret")).unwrap().unwrap().role,
            Role::User
        );
        assert_eq!(
            d.authenticate(pw("root", "toor")).unwrap().unwrap().role,
            Role::Admin
        );
        assert_eq!(
            d.authenticate(pw("root", "toor")).unwrap().unwrap().role,
            Role::Admin,
            "cached"
        );
        assert_eq!(
            d.authenticate(pw("alice", "wrong")),
            Err(AuthError::BadPassword)
        );
        assert_eq!(
            d.authenticate(pw("nobody", "x")),
            Err(AuthError::BadPassword)
        );
        let now = unix_now();
        d.put_user(StoredUser {
            name: "carol".into(),
            password_hash: hash_password("one").unwrap(),
            role: Role::User,
            created_at: now,
            updated_at: now,
        });
        assert!(d.authenticate(pw("carol", "one")).is_ok());
        let mut carol = d.stored_user("carol").unwrap();
        carol.password_hash = hash_password("two").unwrap();
        d.put_user(carol);
        assert_eq!(
            d.authenticate(pw("carol", "one")),
            Err(AuthError::BadPassword),
            "the cache forgot"
        );
        assert!(d.authenticate(pw("carol", "two")).is_ok());
        assert!(d.remove_user("carol"));
        assert!(d.authenticate(pw("carol", "two")).is_err());
    }

    #[test]
    fn keys_work_as_bearer_or_password_until_revoked_or_expired() {
        let d = locked();
        let m = KeySpec {
            name: "sensor".into(),
            scopes: Some(vec![Scope::Publish]),
            ..Default::default()
        }
        .mint(unix_now());
        d.put_key(m.stored.clone());
        let who = d
            .authenticate(Credentials::Bearer(&m.key))
            .unwrap()
            .unwrap();
        assert_eq!(who.id, format!("key:{}", m.stored.id));
        assert!(who.allows(Scope::Publish) && !who.allows(Scope::Read));
        assert!(d.authenticate(pw("anything", &m.key)).is_ok());
        let tampered = format!("{}x", m.key);
        assert_eq!(
            d.authenticate(Credentials::Bearer(&tampered)),
            Err(AuthError::BadKey("unknown or revoked"))
        );
        let old = KeySpec {
            name: "old".into(),
            expires_in: Some(0),
            ..Default::default()
        }
        .mint(unix_now() - 10);
        d.put_key(old.stored.clone());
        assert_eq!(
            d.authenticate(Credentials::Bearer(&old.key)),
            Err(AuthError::BadKey("expired"))
        );
        assert!(d.remove_key(&m.stored.id));
        assert!(d.authenticate(Credentials::Bearer(&m.key)).is_err());
        assert_eq!(d.keys().len(), 1);
    }

    #[test]
    fn jwts_are_checked_for_signature_claims_and_algorithm() {
        use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
        let secret = "0123456789abcdef0123456789abcdef";
        let d = Directory::new(DirectoryConfig {
            jwt: Some(JwtConfig {
                secret: Some(secret.into()),
                issuer: Some("https://issuer".into()),
                audience: Some("polyport".into()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
        let now = unix_now();
        let sign = |claims: serde_json::Value, key: &str| {
            encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(key.as_bytes()),
            )
            .unwrap()
        };
        let good = serde_json::json!({"sub": "dave", "role": ["admin"], "iss": "https://issuer", "aud": "polyport", "exp": now + 60, "team": "x"});
        let who = d
            .authenticate(Credentials::Bearer(&sign(good.clone(), secret)))
            .unwrap()
            .unwrap();
        assert_eq!(
            (who.id.as_str(), who.role, &who.via),
            ("dave", Role::Admin, &Via::Jwt)
        );
        assert_eq!(who.claims["team"], "x");
        assert!(
            d.authenticate(pw("dave", &sign(good.clone(), secret)))
                .is_ok()
        );
        let wrong_key = sign(good.clone(), "another secret that is 32 bytes long!");
        assert!(matches!(
            d.authenticate(Credentials::Bearer(&wrong_key)),
            Err(AuthError::BadToken(_))
        ));
        let mut expired = good.clone();
        expired["exp"] = (now - 3600).into();
        assert_eq!(
            d.authenticate(Credentials::Bearer(&sign(expired, secret))),
            Err(AuthError::BadToken("it has expired".into()))
        );
        let mut within_leeway = good.clone();
        within_leeway["exp"] = (now - 10).into();
        assert!(
            d.authenticate(Credentials::Bearer(&sign(within_leeway, secret)))
                .is_ok()
        );
        let mut aud = good.clone();
        aud["aud"] = "other".into();
        assert!(
            d.authenticate(Credentials::Bearer(&sign(aud, secret)))
                .is_err()
        );
        let mut no_exp = good.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(
            d.authenticate(Credentials::Bearer(&sign(no_exp, secret)))
                .is_err()
        );
        // `alg: none` (an unsigned token) is never accepted.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let unsigned = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(good.to_string())
        );
        assert!(d.authenticate(Credentials::Bearer(&unsigned)).is_err());
        assert!(
            Directory::new(DirectoryConfig {
                jwt: Some(JwtConfig {
                    secret: Some("short".into()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .is_err()
        );
    }
}

#[cfg(test)]
mod dummy {
    #[test]
    fn the_dummy_hash_is_checked_for_real() {
        assert!(crate::password::check_hash(super::DUMMY_HASH).is_ok());
    }
}
