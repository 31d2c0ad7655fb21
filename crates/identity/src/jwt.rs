//! JWT verification: HS*, RS*, PS*, ES* and EdDSA through `jsonwebtoken`, with the key
//! chosen by the token's `alg` (and `kid` for a JWKS), never by anything else the token
//! says, so a token cannot pick a weaker check than the key was configured for.

use std::path::PathBuf;

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::RwLock;
use serde::Deserialize;
use serde_json::{Map, Value};

pub use jsonwebtoken::jwk::JwkSet;

use crate::{AuthError, ConfigError, Identity, Role, Scope, Via};

/// `[auth.jwt]`: where keys come from and what a token must say.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// Shared secret for HS256/384/512.
    pub secret: Option<String>,
    /// A file holding that secret (trailing whitespace trimmed).
    pub secret_file: Option<PathBuf>,
    /// PEM public keys (RSA or EC) for RS*/PS*/ES*.
    pub public_key_files: Vec<PathBuf>,
    /// A JWKS document on disk.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL the server fetches at start and every `jwks_refresh_secs`.
    pub jwks_url: Option<String>,
    /// Seconds between JWKS fetches.
    pub jwks_refresh_secs: u64,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud` (one of).
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Whether a token without `exp` is refused.
    pub require_exp: bool,
    /// The claim naming the identity.
    pub subject_claim: String,
    /// The claim holding a role name or a list of them.
    pub role_claim: String,
    /// Role names that make an admin.
    pub admin_roles: Vec<String>,
    /// A claim of scopes (space-separated or a list) that narrows the token; unset: the
    /// token's scopes are not read.
    pub scopes_claim: Option<String>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            secret: None,
            secret_file: None,
            public_key_files: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_secs: 300,
            issuer: None,
            audience: None,
            leeway_secs: 60,
            require_exp: true,
            subject_claim: "sub".into(),
            role_claim: "role".into(),
            admin_roles: vec!["admin".into()],
            scopes_claim: None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family(alg: Algorithm) -> Family {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => Family::Hmac,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
        ES256 | ES384 => Family::Ec,
        EdDSA => Family::Ed,
    }
}

struct Key {
    kid: Option<String>,
    family: Family,
    /// A JWK's `alg`, when it names one: only that algorithm may use the key.
    only: Option<Algorithm>,
    key: DecodingKey,
}

pub(crate) struct Verifier {
    cfg: JwtConfig,
    fixed: Vec<Key>,
    jwks: RwLock<Vec<Key>>,
    /// A JWKS URL's keys have arrived at least once.
    fetched: std::sync::atomic::AtomicBool,
}

fn jwk_key(jwk: &Jwk) -> Option<Key> {
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Family::Rsa,
        AlgorithmParameters::EllipticCurve(_) => Family::Ec,
        AlgorithmParameters::OctetKey(_) => Family::Hmac,
        AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
    };
    let only = jwk
        .common
        .key_algorithm
        .and_then(|a| a.to_string().parse::<Algorithm>().ok());
    Some(Key {
        kid: jwk.common.key_id.clone(),
        family,
        only,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

fn jwks_keys(set: &JwkSet) -> Vec<Key> {
    set.keys.iter().filter_map(jwk_key).collect()
}

impl Verifier {
    pub(crate) fn new(cfg: JwtConfig) -> Result<Self, ConfigError> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p)
                .map_err(|e| ConfigError(format!("auth.jwt: reading {}: {e}", p.display())))
        };
        let mut fixed = Vec::new();
        let secret = match (&cfg.secret, &cfg.secret_file) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(p)) => Some(read(p)?.trim_end().to_string()),
            (None, None) => None,
        };
        if let Some(s) = secret {
            if s.len() < 32 {
                return Err(ConfigError(
                    "auth.jwt: the HS256 secret must be at least 32 bytes".into(),
                ));
            }
            fixed.push(Key {
                kid: None,
                family: Family::Hmac,
                only: None,
                key: DecodingKey::from_secret(s.as_bytes()),
            });
        }
        for p in &cfg.public_key_files {
            let pem = read(p)?;
            let key = if let Ok(k) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                (Family::Rsa, k)
            } else if let Ok(k) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                (Family::Ec, k)
            } else if let Ok(k) = DecodingKey::from_ed_pem(pem.as_bytes()) {
                (Family::Ed, k)
            } else {
                return Err(ConfigError(format!(
                    "auth.jwt: {} is not an RSA, EC or Ed25519 public key in PEM",
                    p.display()
                )));
            };
            fixed.push(Key {
                kid: None,
                family: key.0,
                only: None,
                key: key.1,
            });
        }
        let jwks = match &cfg.jwks_file {
            Some(p) => {
                let set: JwkSet = serde_json::from_str(&read(p)?).map_err(|e| {
                    ConfigError(format!("auth.jwt: {} is not a JWKS: {e}", p.display()))
                })?;
                jwks_keys(&set)
            }
            None => Vec::new(),
        };
        if fixed.is_empty() && jwks.is_empty() && cfg.jwks_url.is_none() {
            return Err(ConfigError(
                "auth.jwt needs a key: secret, secret_file, public_key_files, jwks_file or jwks_url"
                    .into(),
            ));
        }
        Ok(Self {
            cfg,
            fixed,
            jwks: RwLock::new(jwks),
            fetched: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub(crate) fn config(&self) -> &JwtConfig {
        &self.cfg
    }

    pub(crate) fn set_jwks(&self, set: &JwkSet) {
        *self.jwks.write() = jwks_keys(set);
        self.fetched
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether tokens from the JWKS URL cannot be checked yet (its keys never arrived).
    pub(crate) fn awaiting_jwks(&self) -> bool {
        self.cfg.jwks_url.is_some() && !self.fetched.load(std::sync::atomic::Ordering::Acquire)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.cfg.leeway_secs;
        v.validate_nbf = true;
        v.validate_exp = true;
        v.set_required_spec_claims(if self.cfg.require_exp {
            &["exp"][..]
        } else {
            &[][..]
        });
        match &self.cfg.issuer {
            Some(i) => v.set_issuer(&[i]),
            None => v.iss = None,
        }
        match &self.cfg.audience {
            Some(a) => v.set_audience(&[a]),
            None => v.validate_aud = false,
        }
        v
    }

    /// The identity a valid token names, and when it expires.
    pub(crate) fn verify(&self, token: &str) -> Result<(Identity, Option<u64>), AuthError> {
        let bad = |m: &str| AuthError::BadToken(m.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad("not a JWT"))?;
        let alg = header.alg;
        let fam = family(alg);
        let fits = |k: &Key| {
            k.family == fam
                && k.only.is_none_or(|o| o == alg)
                && (header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
        };
        let validation = self.validation(alg);
        let jwks = self.jwks.read();
        let mut last = bad("no configured key verifies it");
        for k in self.fixed.iter().chain(jwks.iter()).filter(|k| fits(k)) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, &validation) {
                Ok(data) => return self.identity(data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::InvalidSignature | K::InvalidKeyFormat | K::InvalidAlgorithm => {
                            continue;
                        }
                        K::ExpiredSignature => bad("it has expired"),
                        K::ImmatureSignature => bad("it is not valid yet (nbf)"),
                        K::InvalidIssuer => bad("wrong issuer (iss)"),
                        K::InvalidAudience => bad("wrong audience (aud)"),
                        K::MissingRequiredClaim(c) => {
                            AuthError::BadToken(format!("it has no '{c}' claim"))
                        }
                        _ => AuthError::BadToken(e.to_string()),
                    };
                    return Err(last);
                }
            }
        }
        Err(last)
    }

    fn identity(&self, claims: Map<String, Value>) -> Result<(Identity, Option<u64>), AuthError> {
        let cfg = &self.cfg;
        let id = match claims.get(&cfg.subject_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                return Err(AuthError::BadToken(format!(
                    "it has no '{}' claim naming who it is",
                    cfg.subject_claim
                )));
            }
        };
        let names = |v: Option<&Value>| -> Vec<String> {
            match v {
                Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            }
        };
        let admin = names(claims.get(&cfg.role_claim))
            .iter()
            .any(|r| cfg.admin_roles.contains(r));
        let scopes = cfg.scopes_claim.as_ref().map(|c| {
            names(claims.get(c))
                .iter()
                .filter_map(|s| Scope::parse(s))
                .collect()
        });
        let exp = claims.get("exp").and_then(Value::as_u64);
        Ok((
            Identity {
                id,
                role: if admin { Role::Admin } else { Role::User },
                via: Via::Jwt,
                scopes,
                claims,
            },
            exp,
        ))
    }
}

/// Whether a presented secret has a JWT's shape (three base64url parts, a JSON header).
pub(crate) fn looks_like_jwt(s: &[u8]) -> bool {
    s.starts_with(b"eyJ") && s.iter().filter(|b| **b == b'.').count() == 2
}
