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
    KeySpec, KeyView, Role, Scope, Secret, UserView, Via, hash_password, unix_now, verify_password,
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

    /// Whether this is the server acting for itself ([`AuthContext::system`]), which no
    /// per-caller cap, rate or audit entry applies to.
    pub fn is_system(&self) -> bool {
        self.identity
            .as_deref()
            .is_some_and(|i| i.via == Via::System)
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
/// or subscribe to `$SYS`; a scoped key or token only what its scopes name; and, with an
/// [`Acl`], publish and subscribe only where it says.
#[derive(Debug, Default)]
pub struct Roles {
    acl: Option<Acl>,
}

impl Roles {
    /// Roles plus topic ACLs (none: every topic).
    pub fn with_acl(acl: Option<Acl>) -> Self {
        Self { acl }
    }
}

/// One `[[auth.acl]]` entry, as Mosquitto's acl_file has them: who it is for, and the
/// topic patterns (with `%u` for the identity and `%c` for the client id) it opens.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclEntry {
    /// A user id, `*` (anyone signed in), `anonymous`, `role:admin` or `role:user`.
    pub who: String,
    /// Topic filters it may publish on (a topic must match one).
    #[serde(default)]
    pub publish: Vec<String>,
    /// Topic filters it may subscribe to (a subscription must lie within one).
    #[serde(default)]
    pub subscribe: Vec<String>,
}

/// Topic ACLs: once there are any, callers other than admins publish and subscribe only
/// where an entry for them allows (deny by default, as Mosquitto does). Record changes
/// (`collections/…`) are governed by collection rules instead, so subscriptions within
/// them are not checked here.
#[derive(Clone, Debug)]
pub struct Acl {
    entries: Vec<AclEntry>,
}

impl Acl {
    /// Checks every pattern.
    pub fn new(entries: Vec<AclEntry>) -> Result<Self, String> {
        for (i, e) in entries.iter().enumerate() {
            for p in e.publish.iter().chain(&e.subscribe) {
                let probe = p.replace("%u", "u").replace("%c", "c");
                crate::topic::TopicFilter::new(&probe)
                    .map_err(|err| format!("auth.acl[{i}]: '{p}' is not a topic filter: {err}"))?;
            }
        }
        Ok(Self { entries })
    }

    fn entries_for<'a>(&'a self, ctx: &'a AuthContext) -> impl Iterator<Item = &'a AclEntry> {
        let who = ctx.identity.as_deref();
        self.entries
            .iter()
            .filter(move |e| match (e.who.as_str(), who) {
                ("anonymous", None) => true,
                ("*", Some(_)) => true,
                ("role:admin", Some(i)) => i.role == Role::Admin,
                ("role:user", Some(i)) => i.role == Role::User,
                (name, Some(i)) => name == i.id,
                _ => false,
            })
    }

    /// `pattern` with `%u` and `%c` filled in; `None` when the caller has no such value
    /// or it holds a topic's special characters (so an id cannot widen a pattern).
    fn fill(pattern: &str, ctx: &AuthContext) -> Option<String> {
        let clean =
            |v: &str| (!v.is_empty() && !v.contains(['/', '+', '#'])).then(|| v.to_string());
        let mut out = pattern.to_string();
        if out.contains("%u") {
            out = out.replace("%u", &clean(ctx.principal()?)?);
        }
        if out.contains("%c") {
            let id = ctx.sender.as_ref().and_then(|s| s.client_id.as_deref())?;
            out = out.replace("%c", &clean(id)?);
        }
        Some(out)
    }

    fn publish_allowed(&self, ctx: &AuthContext, topic: &str) -> bool {
        self.entries_for(ctx)
            .flat_map(|e| &e.publish)
            .filter_map(|p| Self::fill(p, ctx))
            .any(|p| covers(&p, topic))
    }

    fn subscribe_allowed(&self, ctx: &AuthContext, filter: &str) -> bool {
        filter.starts_with("collections/")
            || self
                .entries_for(ctx)
                .flat_map(|e| &e.subscribe)
                .filter_map(|p| Self::fill(p, ctx))
                .any(|p| covers(&p, filter))
    }
}

/// Whether every topic `filter` matches is matched by `pattern` (a topic is a filter
/// without wildcards, so this also answers whether `pattern` matches a topic).
fn covers(pattern: &str, filter: &str) -> bool {
    let (mut p, mut f) = (pattern.split('/'), filter.split('/'));
    loop {
        match (p.next(), f.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b && b != "+" => {}
            // `a/#` also matches `a` itself.
            _ => return false,
        }
    }
}

impl Policy for Roles {
    fn authorize(&self, ctx: &AuthContext, action: Action<'_>) -> Result<(), HubError> {
        let who = ctx.identity.as_deref();
        if who.is_some_and(|i| i.role == Role::Admin && i.scopes.is_none()) {
            return Ok(());
        }
        let (scope, admin_only) = match action {
            Action::Read(_) => (Some(Scope::Read), false),
            Action::Write(_) => (Some(Scope::Write), false),
            Action::Publish(t) => (
                Some(Scope::Publish),
                t.starts_with("$SYS") || t.starts_with(crate::announce::PREFIX),
            ),
            Action::Subscribe(f) => (Some(Scope::Subscribe), f.starts_with("$SYS")),
            Action::Admin => (Some(Scope::Admin), true),
            Action::AdapterState(_) => (None, false),
        };
        if admin_only && !who.is_some_and(Identity::is_admin) {
            return Err(HubError::Forbidden(match action {
                Action::Admin => "this needs an admin".into(),
                Action::Publish(t) if t.starts_with("$SYS") => {
                    "$SYS topics are the server's own".into()
                }
                Action::Publish(_) => "$polyport/ topics are the server's own".into(),
                _ => "only admins may subscribe to $SYS topics".into(),
            }));
        }
        if let Some(acl) = &self.acl {
            let who = ctx.principal().unwrap_or("an anonymous caller");
            let refusal = match action {
                Action::Publish(t) if !acl.publish_allowed(ctx, t) => {
                    Some(format!("the ACL does not let {who} publish on '{t}'"))
                }
                Action::Subscribe(f) if !acl.subscribe_allowed(ctx, f) => {
                    Some(format!("the ACL does not let {who} subscribe to '{f}'"))
                }
                _ => None,
            };
            if let Some(m) = refusal {
                return Err(HubError::Forbidden(m));
            }
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
        let ok = |c: &AuthContext, a| Roles::default().authorize(c, a).is_ok();
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

    #[test]
    fn acl_patterns_cover_topics_and_narrower_filters_with_substitutions() {
        for (p, f) in [
            ("sensors/#", "sensors/a/b"),
            ("sensors/#", "sensors"),
            ("sensors/#", "sensors/+/t"),
            ("sensors/+/t", "sensors/a/t"),
            ("sensors/+/t", "sensors/+/t"),
            ("#", "#"),
        ] {
            assert!(covers(p, f), "{p} covers {f}");
        }
        for (p, f) in [
            ("sensors/+", "sensors/#"),
            ("sensors/a", "sensors/+"),
            ("sensors/+/t", "sensors/a/t/u"),
            ("a/b", "a"),
            ("sensors/#", "#"),
        ] {
            assert!(!covers(p, f), "{p} does not cover {f}");
        }
        let acl = Acl::new(vec![AclEntry {
            who: "*".into(),
            publish: vec!["sensors/%u/#".into(), "chat/%c".into()],
            subscribe: vec!["sensors/#".into()],
        }])
        .unwrap();
        let policy = Roles::with_acl(Some(acl));
        let alice = AuthContext::identified(
            Origin("t"),
            Some(Arc::new(Identity {
                id: "alice".into(),
                role: Role::User,
                via: Via::Password,
                scopes: None,
                claims: Default::default(),
            })),
        )
        .with_sender(Sender {
            connection: 1,
            client_id: Some("phone".into()),
        });
        let ok = |c: &AuthContext, a| policy.authorize(c, a).is_ok();
        assert!(
            ok(&alice, Action::Publish("sensors/alice/t"))
                && !ok(&alice, Action::Publish("sensors/bob/t"))
        );
        assert!(
            ok(&alice, Action::Publish("chat/phone")) && !ok(&alice, Action::Publish("chat/other"))
        );
        assert!(
            ok(&alice, Action::Subscribe("sensors/+/t")) && !ok(&alice, Action::Subscribe("#"))
        );
        assert!(
            ok(&alice, Action::Subscribe("collections/posts/#")),
            "record changes follow collection rules"
        );
        let anon = AuthContext::anonymous(Origin("t"));
        assert!(
            !ok(&anon, Action::Publish("sensors/x/t")),
            "%u needs an identity; nothing matches"
        );
        let mut sneaky = alice.clone();
        sneaky.identity = Some(Arc::new(Identity {
            id: "bob/#".into(),
            ..(**alice.identity.as_ref().unwrap()).clone()
        }));
        assert!(
            !ok(&sneaky, Action::Publish("sensors/bob/x")),
            "an id with wildcards never fills a pattern"
        );
        assert!(
            Acl::new(vec![AclEntry {
                who: "*".into(),
                publish: vec!["a/#/b".into()],
                subscribe: vec![]
            }])
            .is_err()
        );
    }
}
