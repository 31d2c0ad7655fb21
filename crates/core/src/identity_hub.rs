//! The Hub's identity verbs: turning credentials into an [`AuthContext`] for every
//! adapter, and managing stored users and API keys (admins only). Users and keys are
//! adapter state of the Hub's own (`auth.users`, `auth.keys`), so they commit through
//! the same writer as everything else and follow the store to any engine.

use bytes::Bytes;
use polyport_identity::{
    AuthError, Credentials, Directory, KeySpec, KeyView, Role, StoredKey, StoredUser, UserView,
    hash_password, unix_now,
};

use crate::adapter::Peer;
use crate::auth::{Action, AuthContext};
use crate::engine::WriteCommand;
use crate::error::{HubError, HubResult};
use crate::event::Origin;
use crate::hub::Hub;
use crate::schema::{FieldError, Rule};

const USERS: &str = "auth.users";
const KEYS: &str = "auth.keys";
/// On the cluster engine, where a node announces it changed the stored users or keys:
/// every node follows it and loads them again, so a key made through one node is
/// accepted by the others (once their log follower has the event, milliseconds), and a
/// revoked one refused. The announcement carries nothing.
const IDENTITIES_CHANGED: &str = "identities";

fn invalid(field: &str, message: impl Into<String>) -> HubError {
    HubError::Validation(vec![FieldError::new(field, Rule::Format, message)])
}

/// A login name every protocol can carry: no `:` (HTTP Basic), no spaces or controls.
fn check_name(name: &str) -> HubResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name
            .chars()
            .any(|c| c == ':' || c.is_whitespace() || c.is_control());
    match ok {
        true => Ok(()),
        false => Err(invalid(
            "name",
            "use 1-64 characters without ':', spaces or control characters",
        )),
    }
}

fn check_password(password: &str) -> HubResult<()> {
    match password.chars().count() >= 8 {
        true => Ok(()),
        false => Err(invalid("password", "use at least 8 characters")),
    }
}

fn parse_entry<T: serde::de::DeserializeOwned>(what: &str, key: String, v: &[u8]) -> Option<T> {
    let r = serde_json::from_slice(v);
    if r.is_err() {
        tracing::warn!(%what, %key, "skipping an unreadable stored entry");
    }
    r.ok()
}

impl Hub {
    /// Turns credentials presented to any adapter into an [`AuthContext`] for it. A
    /// password may be an API key or a JWT, whatever the username says.
    pub fn authenticate(
        &self,
        origin: Origin,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> HubResult<AuthContext> {
        let creds = match (username, password) {
            (None, None) => Credentials::None,
            (u, p) => Credentials::Password {
                username: u.unwrap_or(""),
                password: p.unwrap_or(b""),
            },
        };
        let identity = self
            .inner
            .identities
            .authenticate(creds)
            .map_err(|e| self.refused(origin, username, e))?;
        Ok(AuthContext::identified(origin, identity))
    }

    fn refused(&self, origin: Origin, username: Option<&str>, e: AuthError) -> HubError {
        metrics::counter!("polyport_auth_failures_total", "origin" => origin.0).increment(1);
        let reason = e.to_string();
        self.audit_auth_failed(origin, username, &reason);
        HubError::Unauthenticated(reason)
    }

    /// [`Hub::authenticate`] for a connection: credentials it sent win; without any, the
    /// client certificate its TLS listener verified names the caller.
    pub fn authenticate_peer(
        &self,
        origin: Origin,
        peer: &Peer,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> HubResult<AuthContext> {
        match (&peer.certificate, username, password) {
            (Some(subject), None, None) => self.authenticate_certificate(origin, subject),
            _ => self.authenticate(origin, username, password),
        }
    }

    /// The caller a verified client certificate names (its subject's common name).
    pub fn authenticate_certificate(
        &self,
        origin: Origin,
        subject: &str,
    ) -> HubResult<AuthContext> {
        let identity = self
            .inner
            .identities
            .authenticate(Credentials::Certificate(subject))
            .map_err(|e| self.refused(origin, Some(subject), e))?;
        Ok(AuthContext::identified(origin, identity))
    }

    /// Like [`Hub::authenticate`] for a bearer token (an API key or a JWT).
    pub fn authenticate_bearer(&self, origin: Origin, token: &str) -> HubResult<AuthContext> {
        let identity = self
            .inner
            .identities
            .authenticate(Credentials::Bearer(token))
            .map_err(|e| self.refused(origin, None, e))?;
        Ok(AuthContext::identified(origin, identity))
    }

    /// Like [`Hub::authenticate`] for an HTTP-style `Authorization` value (HTTP, gRPC
    /// metadata, GraphQL's `connection_init`): `Basic` or `Bearer`; another scheme is
    /// refused rather than taken as anonymous.
    pub fn authenticate_header(&self, origin: Origin, value: &str) -> HubResult<AuthContext> {
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return self.authenticate_bearer(origin, rest.trim());
        }
        let (user, pass) = crate::auth::basic_credentials(value).map_err(|e| {
            metrics::counter!("polyport_auth_failures_total", "origin" => origin.0).increment(1);
            self.audit_auth_failed(origin, None, &e);
            HubError::Unauthenticated(e)
        })?;
        self.authenticate(origin, Some(&user), Some(&pass))
    }

    /// A short-lived sign-in token for the caller, for clients that cannot send headers
    /// (browsers' EventSource and WebSocket); every door takes it as a bearer token or a
    /// password. Returns the token and when it expires (Unix seconds).
    pub fn issue_token(&self, ctx: &AuthContext) -> HubResult<(String, u64)> {
        let Some(identity) = &ctx.identity else {
            return Err(HubError::Unauthenticated(
                "sign in (Authorization: Basic or Bearer) to get a token".into(),
            ));
        };
        Ok(self.inner.identities.issue_token(identity))
    }

    /// The identity sources, for what adapters must know of them (whether anonymous
    /// callers are let in) and for the server to feed a fetched JWKS.
    pub fn identities(&self) -> &Directory {
        &self.inner.identities
    }

    /// Reads the stored users and keys (once, at start, before serving).
    pub async fn load_identities(&self) -> HubResult<()> {
        if self.inner.store.engine() == "cluster"
            && !self
                .inner
                .identities_followed
                .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            self.follow_identities().await?;
        }
        self.reload_identities().await
    }

    async fn reload_identities(&self) -> HubResult<()> {
        let users: Vec<StoredUser> = (self.inner.store.load_state(USERS).await?)
            .into_iter()
            .filter_map(|(k, v)| parse_entry("user", k, &v))
            .collect();
        let keys: Vec<StoredKey> = (self.inner.store.load_state(KEYS).await?)
            .into_iter()
            .filter_map(|(k, v)| parse_entry("API key", k, &v))
            .collect();
        self.inner.identities.load(users, keys);
        Ok(())
    }

    async fn persist(&self, namespace: &str, key: &str, value: Option<Vec<u8>>) -> HubResult<()> {
        self.write(WriteCommand::PutState {
            namespace: namespace.to_string(),
            key: key.to_string(),
            value: value.map(Bytes::from),
        })
        .await?;
        let seq = self.announce(IDENTITIES_CHANGED, Bytes::new()).await?;
        // Answered once every node applies it: a revoked key fails everywhere after.
        if let Some(agreement) = self.inner.identities_agreed.get() {
            agreement.reached(seq).await;
        }
        Ok(())
    }

    /// Loads the stored identities again whenever a node changes them (the cluster
    /// engine); following before it returns, so nothing falls between it and a load.
    async fn follow_identities(&self) -> HubResult<()> {
        let Some(mut changes) = self.announcements(IDENTITIES_CHANGED).await? else {
            return Ok(());
        };
        let _ = self.inner.identities_agreed.set(changes.agreement());
        let hub = self.clone();
        tokio::spawn(async move {
            while changes.next().await.is_some() {
                // Changes that came together are loaded once.
                changes.skip_waiting().await;
                match hub.reload_identities().await {
                    Ok(()) => changes.applied(),
                    Err(e) => {
                        tracing::warn!(error = %e, "loading the identities another node changed failed")
                    }
                }
            }
        });
        Ok(())
    }

    /// Every user, from the configuration file and stored.
    pub fn users(&self, ctx: &AuthContext) -> HubResult<Vec<UserView>> {
        self.authorize(ctx, Action::Admin)?;
        Ok(self.inner.identities.users())
    }

    /// Creates a stored user, or changes its password and/or role (either way).
    pub async fn put_user(
        &self,
        ctx: &AuthContext,
        name: &str,
        password: Option<&str>,
        role: Option<Role>,
    ) -> HubResult<UserView> {
        self.authorize(ctx, Action::Admin)?;
        check_name(name)?;
        let d = &self.inner.identities;
        if d.is_config_user(name) {
            return Err(HubError::Conflict(vec![FieldError {
                field: "name".into(),
                rule: Rule::Reserved,
                message: format!("user '{name}' is defined in polyport.toml; change it there"),
            }]));
        }
        let now = unix_now();
        let user = match (d.stored_user(name), password) {
            (None, None) => return Err(invalid("password", "a new user needs a password")),
            (existing, pw) => {
                let password_hash = match pw {
                    Some(p) => {
                        check_password(p)?;
                        // argon2 is deliberately slow: keep it off the async workers.
                        let p = p.to_string();
                        tokio::task::spawn_blocking(move || hash_password(&p))
                            .await
                            .map_err(|e| HubError::Storage(e.to_string()))?
                            .map_err(|e| HubError::Storage(e.0))?
                    }
                    None => existing
                        .as_ref()
                        .map(|u| u.password_hash.clone())
                        .unwrap_or_default(),
                };
                StoredUser {
                    name: name.to_string(),
                    password_hash,
                    role: role
                        .or(existing.as_ref().map(|u| u.role))
                        .unwrap_or_default(),
                    created_at: existing.as_ref().map_or(now, |u| u.created_at),
                    updated_at: now,
                }
            }
        };
        let bytes = serde_json::to_vec(&user).map_err(|e| HubError::Storage(e.to_string()))?;
        self.persist(USERS, name, Some(bytes)).await?;
        d.put_user(user.clone());
        self.audit_admin(ctx, "put_user", name);
        Ok(UserView {
            name: user.name,
            role: user.role,
            source: "stored",
            created_at: Some(user.created_at),
            updated_at: Some(user.updated_at),
        })
    }

    /// Creates a stored user; a name taken (here or in polyport.toml) is a conflict.
    pub async fn create_user(
        &self,
        ctx: &AuthContext,
        name: &str,
        password: &str,
        role: Option<Role>,
    ) -> HubResult<UserView> {
        self.authorize(ctx, Action::Admin)?;
        if self.inner.identities.stored_user(name).is_some() {
            return Err(HubError::AlreadyExists(format!("user '{name}'")));
        }
        self.put_user(ctx, name, Some(password), role).await
    }

    /// Changes an existing user's password and/or role.
    pub async fn update_user(
        &self,
        ctx: &AuthContext,
        name: &str,
        password: Option<&str>,
        role: Option<Role>,
    ) -> HubResult<UserView> {
        self.authorize(ctx, Action::Admin)?;
        let d = &self.inner.identities;
        if d.stored_user(name).is_none() && !d.is_config_user(name) {
            return Err(HubError::NotFound(format!("user '{name}'")));
        }
        self.put_user(ctx, name, password, role).await
    }

    /// Removes a stored user; credentials it presented stop working at once.
    pub async fn delete_user(&self, ctx: &AuthContext, name: &str) -> HubResult<()> {
        self.authorize(ctx, Action::Admin)?;
        let d = &self.inner.identities;
        if d.is_config_user(name) {
            return Err(HubError::Conflict(vec![FieldError {
                field: "name".into(),
                rule: Rule::Reserved,
                message: format!("user '{name}' is defined in polyport.toml; remove it there"),
            }]));
        }
        if d.stored_user(name).is_none() {
            return Err(HubError::NotFound(format!("user '{name}'")));
        }
        self.persist(USERS, name, None).await?;
        d.remove_user(name);
        self.audit_admin(ctx, "delete_user", name);
        Ok(())
    }

    /// Every API key (never a secret).
    pub fn api_keys(&self, ctx: &AuthContext) -> HubResult<Vec<KeyView>> {
        self.authorize(ctx, Action::Admin)?;
        Ok(self.inner.identities.keys())
    }

    /// Mints a key: the returned text is the only time it exists in full.
    pub async fn create_api_key(
        &self,
        ctx: &AuthContext,
        spec: KeySpec,
    ) -> HubResult<(String, KeyView)> {
        self.authorize(ctx, Action::Admin)?;
        if spec.name.trim().is_empty() || spec.name.len() > 200 {
            return Err(invalid("name", "give the key a name of 1-200 characters"));
        }
        if let Some(u) = &spec.user {
            check_name(u).map_err(|_| invalid("user", "not a valid user name"))?;
        }
        let minted = spec.mint(unix_now());
        let bytes =
            serde_json::to_vec(&minted.stored).map_err(|e| HubError::Storage(e.to_string()))?;
        self.persist(KEYS, &minted.stored.id, Some(bytes)).await?;
        let view = KeyView::from(&minted.stored);
        self.inner.identities.put_key(minted.stored);
        self.audit_admin(ctx, "create_api_key", &view.id);
        Ok((minted.key, view))
    }

    /// Revokes a key: it stops working at once, on every protocol.
    pub async fn revoke_api_key(&self, ctx: &AuthContext, id: &str) -> HubResult<()> {
        self.authorize(ctx, Action::Admin)?;
        if !self.inner.identities.keys().iter().any(|k| k.id == id) {
            return Err(HubError::NotFound(format!("API key '{id}'")));
        }
        self.persist(KEYS, id, None).await?;
        self.inner.identities.remove_key(id);
        self.audit_admin(ctx, "revoke_api_key", id);
        Ok(())
    }

    /// Makes sure an admin `name` with this password exists (the server's
    /// `POLYPORT_ADMIN_PASSWORD` bootstrap): created, or its password and role reset.
    pub async fn bootstrap_admin(&self, name: &str, password: &str) -> HubResult<()> {
        let system = AuthContext::system(Origin("bootstrap"));
        self.put_user(&system, name, Some(password), Some(Role::Admin))
            .await
            .map(|_| ())
    }
}
