//! The auth seam: every Hub call carries an [`AuthContext`], and a [`Policy`] decides.
//!
//! Only an allow-all policy exists today; the point is that no adapter can call the Hub
//! without saying who is asking, so real policies later apply to every protocol at once.

use crate::error::HubError;
use crate::event::Origin;

/// Who is calling and through which door.
#[derive(Clone, Debug)]
pub struct AuthContext {
    /// Authenticated identity, if any.
    pub principal: Option<String>,
    /// The adapter the call came through.
    pub origin: Origin,
}

impl AuthContext {
    /// An unauthenticated caller on the given adapter.
    pub fn anonymous(origin: Origin) -> Self {
        Self {
            principal: None,
            origin,
        }
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
}

/// Decides whether a caller may perform an action.
pub trait Policy: Send + Sync + 'static {
    /// `Ok(())` to allow, `Err(HubError::Forbidden)` to refuse.
    fn authorize(&self, ctx: &AuthContext, action: Action<'_>) -> Result<(), HubError>;
}

/// Allows everything (the default until auth lands).
#[derive(Debug, Default)]
pub struct AllowAll;

impl Policy for AllowAll {
    fn authorize(&self, _: &AuthContext, _: Action<'_>) -> Result<(), HubError> {
        Ok(())
    }
}
