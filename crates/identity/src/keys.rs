//! API keys: `ppk_<id>_<secret>`, the id to find the key by, 32 random bytes of secret
//! stored only as their SHA-256.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Role, Scope};

const PREFIX: &str = "ppk_";

/// What an admin asks for.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// A label (what the key is for).
    pub name: String,
    /// Defaults to `user`.
    #[serde(default)]
    pub role: Role,
    /// `None`: everything the role allows.
    #[serde(default)]
    pub scopes: Option<Vec<Scope>>,
    /// The user the key acts as (for rules and `%u` in ACLs); `None`: `key:<id>`.
    #[serde(default)]
    pub user: Option<String>,
    /// Seconds from now until it stops working; `None`: never.
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// A key as the server stores it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StoredKey {
    /// Public part, in the key itself.
    pub id: String,
    /// Label.
    pub name: String,
    /// Hex SHA-256 of the secret part.
    pub secret_sha256: String,
    /// Role.
    pub role: Role,
    /// Scopes.
    #[serde(default)]
    pub scopes: Option<Vec<Scope>>,
    /// User it acts as.
    #[serde(default)]
    pub user: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

/// A key as shown to admins (never the secret or its hash).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct KeyView {
    /// Public part.
    pub id: String,
    /// Label.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Scopes.
    pub scopes: Option<Vec<Scope>>,
    /// User it acts as.
    pub user: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub expires_at: Option<u64>,
}

impl From<&StoredKey> for KeyView {
    fn from(k: &StoredKey) -> Self {
        Self {
            id: k.id.clone(),
            name: k.name.clone(),
            role: k.role,
            scopes: k.scopes.clone(),
            user: k.user.clone(),
            created_at: k.created_at,
            expires_at: k.expires_at,
        }
    }
}

/// A new key: the one time its full text exists.
#[derive(Clone, Debug)]
pub struct MintedKey {
    /// `ppk_<id>_<secret>`: give it to the client now; it cannot be shown again.
    pub key: String,
    /// What is stored.
    pub stored: StoredKey,
}

impl KeySpec {
    /// Draws a fresh key for this spec.
    pub fn mint(&self, now: u64) -> MintedKey {
        let id = hex::encode(rand::random::<[u8; 6]>());
        let secret = B64.encode(rand::random::<[u8; 32]>());
        MintedKey {
            key: format!("{PREFIX}{id}_{secret}"),
            stored: StoredKey {
                id,
                name: self.name.clone(),
                secret_sha256: digest(&secret),
                role: self.role,
                scopes: self.scopes.clone(),
                user: self.user.clone(),
                created_at: now,
                expires_at: self.expires_in.map(|s| now.saturating_add(s)),
            },
        }
    }
}

pub(crate) fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether a presented secret looks like an API key at all.
pub(crate) fn looks_like_key(s: &[u8]) -> bool {
    s.starts_with(PREFIX.as_bytes())
}

/// `(id, secret)` of a presented key.
pub(crate) fn split(s: &str) -> Option<(&str, &str)> {
    let rest = s.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_split_back_and_store_only_a_digest() {
        let spec = KeySpec {
            name: "ci".into(),
            expires_in: Some(60),
            ..Default::default()
        };
        let m = spec.mint(1000);
        assert!(looks_like_key(m.key.as_bytes()));
        let (id, secret) = split(&m.key).unwrap();
        assert_eq!(id, m.stored.id);
        assert_eq!(digest(secret), m.stored.secret_sha256);
        assert!(!m.stored.secret_sha256.contains(secret));
        assert_eq!(m.stored.expires_at, Some(1060));
        assert_eq!(split("ppk_"), None);
        assert_eq!(split("ppk_abc"), None);
    }
}
