//! Short-lived sign-in tokens `pp1.<exp>.<identity>.<mac>`, for clients that cannot send
//! a header (a browser's EventSource and WebSocket) or should not hold a long-lived
//! secret. HMAC-SHA256 with a key each process draws at start: tokens end with the
//! process, and a stream opened with one lives on after it expires (only new requests
//! need a fresh one). Any door takes one where it takes a bearer token or a password.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{AuthError, Identity, unix_now};

pub(crate) const PREFIX: &str = "pp1.";

pub(crate) struct Tokens {
    key: [u8; 32],
    pub(crate) ttl: Duration,
}

impl Tokens {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            key: rand::random(),
            ttl,
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length: `new_from_slice` cannot fail here.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }

    /// A token for `identity`, and when it expires (Unix seconds).
    pub(crate) fn issue(&self, identity: &Identity) -> (String, u64) {
        let exp = unix_now() + self.ttl.as_secs();
        let who = serde_json::to_vec(identity).unwrap_or_default();
        let payload = format!("{exp}.{}", B64.encode(who));
        let mut m = self.mac();
        m.update(payload.as_bytes());
        let sig = B64.encode(m.finalize().into_bytes());
        (format!("{PREFIX}{payload}.{sig}"), exp)
    }

    /// The identity a valid, unexpired token names.
    pub(crate) fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let bad = || AuthError::BadToken("it is not a valid sign-in token".into());
        let rest = token.strip_prefix(PREFIX).ok_or_else(bad)?;
        let (payload, sig) = rest.rsplit_once('.').ok_or_else(bad)?;
        let sig = B64.decode(sig).map_err(|_| bad())?;
        let mut m = self.mac();
        m.update(payload.as_bytes());
        m.verify_slice(&sig).map_err(|_| bad())?;
        let (exp, who) = payload.split_once('.').ok_or_else(bad)?;
        let exp: u64 = exp.parse().map_err(|_| bad())?;
        if exp <= unix_now() {
            return Err(AuthError::BadToken(
                "the sign-in token has expired: get a new one from POST /api/auth/token".into(),
            ));
        }
        serde_json::from_slice(&B64.decode(who).map_err(|_| bad())?).map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_as_issued_and_until_they_expire() {
        let t = Tokens::new(Duration::from_secs(60));
        let mut alice = Identity::system();
        alice.id = "alice".into();
        let (tok, _) = t.issue(&alice);
        assert_eq!(t.verify(&tok).ok(), Some(alice.clone()));
        let forged = tok.replace("pp1.", "pp1.9");
        assert!(t.verify(&forged).is_err());
        assert!(
            Tokens::new(Duration::from_secs(60)).verify(&tok).is_err(),
            "another key"
        );
        let expired = Tokens {
            key: t.key,
            ttl: Duration::ZERO,
        };
        let (old, _) = expired.issue(&alice);
        assert!(t.verify(&old).is_err());
    }
}
