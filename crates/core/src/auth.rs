//! The auth seam: every Hub call carries an [`AuthContext`], and a [`Policy`] decides.
//!
//! Adapters turn what their wire carries into an [`AuthContext`] through
//! [`crate::Hub::authenticate`] (username/password — which may be an API key or a JWT) or
//! [`crate::Hub::authenticate_bearer`], so every protocol shares one set of identities
//! (`polyport-identity`'s [`Directory`]). [`Roles`], the default policy, keeps
//! administration to admins and narrows scoped keys; per-collection rules and topic ACLs
//! plug in through [`Policy::authorize`].

use std::sync::Arc;

pub use polyport_identity::{
    AuthError, ConfigUser, Credentials, Directory, DirectoryConfig, Identity, JwkSet, JwtConfig,
    KeySpec, KeyView, Role, Scope, Secret, UserView, Via, hash_password,
};

use crate::attributes::Sender;
use crate::error::HubError;
use crate::event::Origin;

/// Who is calling and through which door.
#[derive(Clone, Debug)]
pub struct AuthContext {
    /// Who, if anyone: `None` is an anonymous caller the directory let in.
    pub identity: Option<Arc<Identity>>,
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
            identity: None,
            origin,
            sender: None,
        }
    }

    /// The server acting on its own behalf (seeding data, delivering webhooks, reading
    /// the catalogue to build a schema): every right, whatever the callers may do.
    pub fn system(origin: Origin) -> Self {
        Self {
            identity: Some(Arc::new(Identity::system())),
            origin,
            sender: None,
        }
    }

    /// A caller with a known identity.
    pub fn identified(origin: Origin, identity: Option<Arc<Identity>>) -> Self {
        Self {
            identity,
            origin,
            sender: None,
        }
    }

    /// The same caller, on the given connection.
    pub fn with_sender(mut self, sender: Sender) -> Self {
        self.sender = Some(sender);
        self
    }

    /// The identity's id, if any.
    pub fn principal(&self) -> Option<&str> {
        self.identity.as_deref().map(|i| i.id.as_str())
    }

    /// Whether the caller may administer.
    pub fn is_admin(&self) -> bool {
        self.identity.as_deref().is_some_and(Identity::is_admin)
    }
}

/// What is being attempted, for the policy to judge.
#[derive(Clone, Copy, Debug)]
pub enum Action<'a> {
    /// Read records of a collection.
    Read(&'a str),
    /// Create, update or delete records of a collection.
    Write(&'a str),
    /// Change collection definitions, webhook endpoints, users and keys.
    Admin,
    /// Publish on a topic.
    Publish(&'a str),
    /// Subscribe to a filter.
    Subscribe(&'a str),
    /// Read or change an adapter's own durable state (a namespace such as
    /// `mqtt.session`), or forget group positions (`groups`).
    AdapterState(&'a str),
}

/// Decides whether a caller may perform an action.
pub trait Policy: Send + Sync + 'static {
    /// `Ok(())` to allow, `Err(HubError::Forbidden)` to refuse.
    fn authorize(&self, ctx: &AuthContext, action: Action<'_>) -> Result<(), HubError>;
}

/// Allows everything.
#[derive(Debug, Default)]
pub struct AllowAll;

impl Policy for AllowAll {
    fn authorize(&self, _: &AuthContext, _: Action<'_>) -> Result<(), HubError> {
        Ok(())
    }
}

/// The default policy: admins may do anything; everyone else (users, keys, JWTs and
/// let-in anonymous callers) may read, write, publish and subscribe but not administer
/// or subscribe to `$SYS`; a scoped key or token only what its scopes name.
#[derive(Debug, Default)]
pub struct Roles;

impl Policy for Roles {
    fn authorize(&self, ctx: &AuthContext, action: Action<'_>) -> Result<(), HubError> {
        let who = ctx.identity.as_deref();
        if who.is_some_and(|i| i.role == Role::Admin && i.scopes.is_none()) {
            return Ok(());
        }
        let (scope, admin_only) = match action {
            Action::Read(_) => (Some(Scope::Read), false),
            Action::Write(_) => (Some(Scope::Write), false),
            Action::Publish(_) => (Some(Scope::Publish), false),
            Action::Subscribe(f) => (Some(Scope::Subscribe), f.starts_with("$SYS")),
            Action::Admin => (Some(Scope::Admin), true),
            Action::AdapterState(_) => (None, false),
        };
        if admin_only && !who.is_some_and(Identity::is_admin) {
            return Err(HubError::Forbidden(match action {
                Action::Admin => "this needs an admin".into(),
                _ => "only admins may subscribe to $SYS topics".into(),
            }));
        }
        if let (Some(s), Some(i)) = (scope, who)
            && !i.allows(s)
        {
            return Err(HubError::Forbidden(format!(
                "the credentials' scopes do not include {}",
                serde_json::to_value(s)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            )));
        }
        Ok(())
    }
}

/// Credentials in an HTTP `Authorization` header (HTTP, and gRPC's `authorization`
/// metadata): `Basic` gives a username and password; anything else is `Err` naming the
/// scheme, so the caller refuses it rather than treating the request as anonymous.
pub fn basic_credentials(header: &str) -> Result<(String, Vec<u8>), String> {
    use base64::Engine as _;
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(format!(
            "the {scheme} scheme is not accepted here: use Basic (username and password) or Bearer (a token or API key)"
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
    fn roles_keep_administration_and_sys_to_admins_and_honour_scopes() {
        let who = |role, scopes| {
            AuthContext::identified(
                Origin("test"),
                Some(Arc::new(Identity {
                    id: "x".into(),
                    role,
                    via: Via::Password,
                    scopes,
                    claims: Default::default(),
                })),
            )
        };
        let admin = who(Role::Admin, None);
        let user = who(Role::User, None);
        let anon = AuthContext::anonymous(Origin("test"));
        let publisher = who(Role::User, Some(vec![Scope::Publish]));
        let scoped_admin = who(Role::Admin, Some(vec![Scope::Read]));
        let ok = |c: &AuthContext, a| Roles.authorize(c, a).is_ok();
        assert!(ok(&admin, Action::Admin) && ok(&admin, Action::Subscribe("$SYS/#")));
        for c in [&user, &anon] {
            assert!(!ok(c, Action::Admin) && !ok(c, Action::Subscribe("$SYS/broker/uptime")));
            assert!(ok(c, Action::Read("posts")) && ok(c, Action::Write("posts")));
            assert!(ok(c, Action::Publish("a/b")) && ok(c, Action::Subscribe("#")));
        }
        assert!(ok(&publisher, Action::Publish("a")) && !ok(&publisher, Action::Read("posts")));
        assert!(
            !ok(&publisher, Action::Subscribe("a"))
                && ok(&publisher, Action::AdapterState("mqtt.session"))
        );
        assert!(ok(&scoped_admin, Action::Read("posts")) && !ok(&scoped_admin, Action::Admin));
        assert!(ok(&AuthContext::system(Origin("t")), Action::Admin));
    }
}
