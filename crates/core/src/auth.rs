//! The auth seam: every Hub call carries an [`AuthContext`], and a [`Policy`] decides.
//!
//! Adapters that receive credentials (MQTT CONNECT today) turn them into an
//! [`AuthContext`] through [`crate::Hub::authenticate`], so every protocol shares one set
//! of identities. [`AllowAll`] accepts anyone; [`StaticUsers`] checks a configured
//! user list. Per-action rules plug in through [`Policy::authorize`].

use crate::attributes::Sender;
use crate::error::HubError;
use crate::event::Origin;

/// Who is calling and through which door.
#[derive(Clone, Debug)]
pub struct AuthContext {
    /// Authenticated identity, if any.
    pub principal: Option<String>,
    /// The adapter the call came through.
    pub origin: Origin,
    /// The connection behind the call, where the protocol has one; the Hub stamps it on
    /// every event the caller publishes.
    pub sender: Option<Sender>,
}

impl AuthContext {
    /// An unauthenticated caller on the given adapter.
    pub fn anonymous(origin: Origin) -> Self {
        Self {
            principal: None,
            origin,
            sender: None,
        }
    }

    /// The same caller, on the given connection.
    pub fn with_sender(mut self, sender: Sender) -> Self {
        self.sender = Some(sender);
        self
    }
}

/// What is being attempted, for the policy to judge.
#[derive(Clone, Copy, Debug)]
pub enum Action<'a> {
    /// Read records of a collection.
    Read(&'a str),
    /// Create, update or delete records of a collection.
    Write(&'a str),
    /// Change collection definitions.
    Admin,
    /// Publish on a topic.
    Publish(&'a str),
    /// Subscribe to a filter.
    Subscribe(&'a str),
    /// Read or change an adapter's own durable state (a namespace such as
    /// `mqtt.session`), or forget group positions (`groups`).
    AdapterState(&'a str),
}

/// Decides who a caller is and whether they may perform an action.
pub trait Policy: Send + Sync + 'static {
    /// Checks credentials; returns the principal (`None`: anonymous) or
    /// `Err(HubError::Unauthenticated)`.
    fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Option<String>, HubError> {
        let _ = password;
        Ok(username.map(str::to_string))
    }

    /// `Ok(())` to allow, `Err(HubError::Forbidden)` to refuse.
    fn authorize(&self, ctx: &AuthContext, action: Action<'_>) -> Result<(), HubError>;
}

/// Allows everything; a username is taken as given (the default).
#[derive(Debug, Default)]
pub struct AllowAll;

impl Policy for AllowAll {
    fn authorize(&self, _: &AuthContext, _: Action<'_>) -> Result<(), HubError> {
        Ok(())
    }
}

/// A fixed list of users with passwords; anonymous callers allowed or not. Applies where
/// an adapter authenticates (MQTT CONNECT); internal callers (the webhook engine) and
/// adapters that take no credentials yet are not refused by it.
#[derive(Debug, Default, Clone)]
pub struct StaticUsers {
    /// Username → password.
    pub users: std::collections::HashMap<String, String>,
    /// Whether callers without a username are let in.
    pub allow_anonymous: bool,
}

impl Policy for StaticUsers {
    fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Option<String>, HubError> {
        let Some(user) = username else {
            return if self.allow_anonymous {
                Ok(None)
            } else {
                Err(HubError::Unauthenticated("credentials required".into()))
            };
        };
        let ok = self
            .users
            .get(user)
            .is_some_and(|want| password.is_some_and(|p| constant_time_eq(want.as_bytes(), p)));
        if ok {
            Ok(Some(user.to_string()))
        } else {
            Err(HubError::Unauthenticated("bad username or password".into()))
        }
    }

    /// Only who may connect is decided here; per-action rules are a separate policy.
    fn authorize(&self, _: &AuthContext, _: Action<'_>) -> Result<(), HubError> {
        Ok(())
    }
}

/// Compares without an early exit, so timing does not reveal the matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Credentials in an HTTP `Authorization` header (HTTP, and gRPC's `authorization`
/// metadata): `Basic` gives a username and password; anything else is `Err` naming the
/// scheme, so the caller refuses it rather than treating the request as anonymous.
pub fn basic_credentials(header: &str) -> Result<(String, Vec<u8>), String> {
    use base64::Engine as _;
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(format!(
            "the {scheme} scheme is not accepted here: use Basic (username and password)"
        ));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|_| "Basic credentials are not base64".to_string())?;
    let colon = raw
        .iter()
        .position(|b| *b == b':')
        .ok_or_else(|| "Basic credentials need username:password".to_string())?;
    let user = String::from_utf8(raw[..colon].to_vec())
        .map_err(|_| "the username is not UTF-8".to_string())?;
    Ok((user, raw[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_parsed_and_other_schemes_named() {
        // "alice:s3:cret" — a password may hold colons.
        assert_eq!(
            basic_credentials("Basic YWxpY2U6czM6Y3JldA=="),
            Ok(("alice".to_string(), b"s3:cret".to_vec()))
        );
        assert!(
            basic_credentials("Bearer abc")
                .unwrap_err()
                .contains("Bearer")
        );
        assert!(basic_credentials("Basic !!!").is_err());
        assert!(basic_credentials("Basic YWxpY2U=").is_err());
    }

    #[test]
    fn static_users_check_passwords_and_anonymity() {
        let p = StaticUsers {
            users: [("alice".to_string(), "s3cret".to_string())].into(),
            allow_anonymous: false,
        };
        assert_eq!(
            p.authenticate(Some("alice"), Some(b"s3cret")).ok(),
            Some(Some("alice".into()))
        );
        assert!(p.authenticate(Some("alice"), Some(b"s3cre")).is_err());
        assert!(p.authenticate(Some("alice"), None).is_err());
        assert!(p.authenticate(Some("bob"), Some(b"s3cret")).is_err());
        assert!(p.authenticate(None, None).is_err());
        let open = StaticUsers {
            allow_anonymous: true,
            ..p
        };
        assert_eq!(open.authenticate(None, None).ok(), Some(None));
    }
}
