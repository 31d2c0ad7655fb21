//! `HubError`: the one error vocabulary every adapter translates into its wire form
//! (HTTP status, gRPC status, MQTT reason code, …) in exactly one place of its own.

use crate::query::FilterError;
use crate::schema::FieldError;
use crate::topic::TopicError;

/// Everything a Hub call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// No such collection.
    #[error("collection '{0}' does not exist")]
    CollectionNotFound(String),
    /// No such record.
    #[error("record '{id}' does not exist in collection '{collection}'")]
    RecordNotFound {
        /// Collection.
        collection: String,
        /// Id.
        id: String,
    },
    /// Some other named thing (a webhook endpoint, a delivery) does not exist.
    #[error("{0} does not exist")]
    NotFound(String),
    /// A collection or record with that name/id exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The document or definition broke schema rules.
    #[error("validation failed: {}", summary(.0))]
    Validation(Vec<FieldError>),
    /// A unique field's value is taken.
    #[error("conflict: {}", summary(.0))]
    Conflict(Vec<FieldError>),
    /// Optimistic-lock failure.
    #[error("version mismatch: expected {expected}, current is {current}")]
    VersionMismatch {
        /// What the caller expected.
        expected: u64,
        /// What is stored.
        current: u64,
    },
    /// Malformed record id.
    #[error("invalid record id '{0}': use 1-128 of A-Z a-z 0-9 _ -")]
    InvalidId(String),
    /// Malformed topic or filter.
    #[error("invalid topic: {0}")]
    InvalidTopic(#[from] TopicError),
    /// Malformed filter or sort.
    #[error("invalid filter: {0}")]
    InvalidFilter(#[from] FilterError),
    /// Malformed or foreign cursor.
    #[error("invalid cursor: {0}")]
    InvalidCursor(String),
    /// Any other malformed request argument.
    #[error("{0}")]
    InvalidRequest(String),
    /// The resume position fell out of retention (or the log is younger).
    #[error(
        "position {requested} is not available: the log (epoch {epoch}) holds {first_available}..={last}"
    )]
    PositionUnavailable {
        /// Requested resume position.
        requested: u64,
        /// First sequence still in the log.
        first_available: u64,
        /// Last sequence in the log.
        last: u64,
        /// Current epoch.
        epoch: String,
    },
    /// The client's position belongs to another log.
    #[error("epoch mismatch: position is from epoch {given}, the log is epoch {current}")]
    EpochMismatch {
        /// Epoch the client holds.
        given: String,
        /// The log's epoch.
        current: String,
    },
    /// Writing to an unknown collection while auto-create is off.
    #[error("collection '{0}' does not exist and auto_create_collections is off")]
    AutoCreateDisabled(String),
    /// A configured cap would be exceeded (e.g. the number of collections).
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// The caller's identity is over its request rate ([`crate::rate`]).
    #[error("rate limited: too many requests from this identity; retry in {} ms", .retry_after.as_millis().max(1))]
    RateLimited {
        /// When a request would be admitted again.
        retry_after: std::time::Duration,
    },
    /// The auth policy refused.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Credentials missing or wrong.
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// The subscriber fell so far behind that ephemeral events were dropped, and its
    /// overflow policy is to disconnect.
    #[error(
        "slow consumer: {dropped} ephemeral events could not be delivered; subscription closed (reconnect, read faster, or use overflow=notify)"
    )]
    SlowConsumer {
        /// How many were dropped.
        dropped: u64,
    },
    /// The hub is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// Storage failed; details are logged, not leaked.
    #[error("storage error: {0}")]
    Storage(String),
    /// The engine underneath (the cluster engine's database) cannot be reached now: the
    /// same request may succeed later, and nothing of it was done.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

fn summary(errs: &[FieldError]) -> String {
    errs.iter()
        .map(|e| e.message.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

impl HubError {
    /// A stable machine-readable code, shared by every face.
    pub fn code(&self) -> &'static str {
        match self {
            HubError::CollectionNotFound(_) => "collection_not_found",
            HubError::RecordNotFound { .. } => "record_not_found",
            HubError::NotFound(_) => "not_found",
            HubError::AlreadyExists(_) => "already_exists",
            HubError::Validation(_) => "validation_failed",
            HubError::Conflict(_) => "unique_violation",
            HubError::VersionMismatch { .. } => "version_mismatch",
            HubError::InvalidId(_) => "invalid_id",
            HubError::InvalidTopic(_) => "invalid_topic",
            HubError::InvalidFilter(_) => "invalid_filter",
            HubError::InvalidCursor(_) => "invalid_cursor",
            HubError::InvalidRequest(_) => "invalid_request",
            HubError::PositionUnavailable { .. } => "position_unavailable",
            HubError::EpochMismatch { .. } => "epoch_mismatch",
            HubError::AutoCreateDisabled(_) => "auto_create_disabled",
            HubError::LimitReached(_) => "limit_reached",
            HubError::RateLimited { .. } => "rate_limited",
            HubError::Forbidden(_) => "forbidden",
            HubError::Unauthenticated(_) => "unauthenticated",
            HubError::SlowConsumer { .. } => "slow_consumer",
            HubError::ShuttingDown => "shutting_down",
            HubError::Storage(_) => "storage_error",
            HubError::Unavailable(_) => "unavailable",
        }
    }

    /// Field-level details, when the error has them.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            HubError::Validation(e) | HubError::Conflict(e) => e,
            _ => &[],
        }
    }
}

/// Result alias for Hub calls.
pub type HubResult<T> = Result<T, HubError>;
