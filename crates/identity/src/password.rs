//! argon2id password hashes in PHC string form (`$argon2id$v=19$m=19456,t=2,p=1$…`).

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::ConfigError;

/// Hashes a password with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, ConfigError> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| ConfigError(format!("salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ConfigError(format!("hashing the password: {e}")))
}

/// Whether `password` matches the PHC string `hash` (false for a malformed hash).
pub fn verify_password(hash: &str, password: &[u8]) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password, &h).is_ok())
}

/// Checks that a configured hash is one `verify_password` can use.
pub(crate) fn check_hash(hash: &str) -> Result<(), ConfigError> {
    let h = PasswordHash::new(hash).map_err(|e| ConfigError(format!("not a PHC hash: {e}")))?;
    if h.algorithm.as_str() != "argon2id" {
        return Err(ConfigError(format!(
            "the hash is {}: use argon2id (`polyport users hash` prints one)",
            h.algorithm
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_their_password_and_are_salted() {
        let a = hash_password("s3cret").unwrap();
        let b = hash_password("s3cret").unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b, "each hash has its own salt");
        assert!(verify_password(&a, b"s3cret"));
        assert!(!verify_password(&a, b"s3cret "));
        assert!(!verify_password("not a hash", b"s3cret"));
        assert!(check_hash(&a).is_ok());
        assert!(check_hash("$2b$12$abcdefghijklmnopqrstuv").is_err());
    }
}
