//! RFC 9457 problem details: the one way the HTTP face reports errors, and the single
//! place a [`HubError`] becomes an HTTP status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use polyport_core::HubError;
use polyport_core::schema::FieldError;
use serde_json::{Value, json};

/// An HTTP error rendered as `application/problem+json` (boxed: it travels in every
/// handler's `Result`).
#[derive(Debug)]
pub struct ApiError(Box<Problem>);

/// The fields of a problem document.
#[derive(Debug)]
pub struct Problem {
    /// Status code.
    pub status: StatusCode,
    /// Stable machine-readable code (also in `type` as `urn:polyport:problem:{code}`).
    pub code: &'static str,
    /// Human explanation of this occurrence.
    pub detail: String,
    /// Field-level errors.
    pub errors: Vec<FieldError>,
    /// Extra members (e.g. the log position on a resume failure).
    pub extra: Option<Value>,
}

impl std::ops::Deref for ApiError {
    type Target = Problem;
    fn deref(&self) -> &Problem {
        &self.0
    }
}

impl ApiError {
    /// A problem with just a status, code and detail.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self(Box::new(Problem {
            status,
            code,
            detail: detail.into(),
            errors: Vec::new(),
            extra: None,
        }))
    }

    /// 400 with code `bad_request`.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut v = json!({
            "type": format!("urn:polyport:problem:{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        if !self.errors.is_empty() {
            v["errors"] = serde_json::to_value(&self.errors).unwrap_or(Value::Null);
        }
        if let (Some(Value::Object(extra)), Value::Object(m)) = (&self.extra, &mut v) {
            for (k, x) in extra {
                m.insert(k.clone(), x.clone());
            }
        }
        v
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        let status = match &e {
            HubError::CollectionNotFound(_)
            | HubError::NotFound(_)
            | HubError::RecordNotFound { .. }
            | HubError::AutoCreateDisabled(_) => StatusCode::NOT_FOUND,
            HubError::AlreadyExists(_) | HubError::Conflict(_) => StatusCode::CONFLICT,
            HubError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            HubError::VersionMismatch { .. } => StatusCode::PRECONDITION_FAILED,
            HubError::InvalidId(_)
            | HubError::InvalidTopic(_)
            | HubError::InvalidFilter(_)
            | HubError::InvalidCursor(_)
            | HubError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            HubError::PositionUnavailable { .. } | HubError::EpochMismatch { .. } => {
                StatusCode::GONE
            }
            HubError::Forbidden(_) | HubError::LimitReached(_) => StatusCode::FORBIDDEN,
            HubError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            HubError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            HubError::ShuttingDown | HubError::SlowConsumer { .. } | HubError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            HubError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let extra = match &e {
            HubError::PositionUnavailable {
                requested,
                first_available,
                last,
                epoch,
            } => Some(json!({
                "requested": requested,
                "first_available": first_available,
                "last": last,
                "epoch": epoch,
            })),
            HubError::EpochMismatch { current, .. } => Some(json!({ "epoch": current })),
            HubError::InvalidFilter(f) => Some(json!({ "position": f.position })),
            HubError::RateLimited { retry_after } => {
                Some(json!({ "retry_after_ms": retry_after.as_millis() as u64 }))
            }
            HubError::VersionMismatch { current, .. } => {
                Some(json!({ "current_version": current }))
            }
            _ => None,
        };
        let detail = match &e {
            HubError::Storage(_) => "internal storage error; see the server log".to_string(),
            other => other.to_string(),
        };
        Self(Box::new(Problem {
            status,
            code: e.code(),
            detail,
            errors: e.field_errors().to_vec(),
            extra,
        }))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, self.body().to_string()).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(ms) = self
            .extra
            .as_ref()
            .and_then(|x| x.get("retry_after_ms"))
            .and_then(Value::as_u64)
        {
            let secs = polyport_core::rate::retry_after_secs(std::time::Duration::from_millis(ms));
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

/// Result alias for handlers.
pub(crate) type ApiResult<T> = Result<T, ApiError>;
