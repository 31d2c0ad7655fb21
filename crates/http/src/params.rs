//! Request parsing that answers mistakes with problem+json instead of axum's plain-text
//! rejections: query strings (with repeated keys), JSON bodies with size and type checks.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use polyport_core::event::is_json_type;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A parsed query string that keeps repeated keys.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    /// Parses a raw query string.
    pub(crate) fn parse(raw: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// The last value of a key.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a key, also splitting comma lists when `split` is set.
    pub(crate) fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A number, with a range check.
    pub(crate) fn u64(&self, key: &str, max: u64) -> Result<Option<u64>, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n <= max => Ok(Some(n)),
                _ => Err(ApiError::bad_request(format!(
                    "query parameter '{key}' must be a whole number between 0 and {max}"
                ))),
            },
        }
    }

    /// A boolean (`true`/`false`/`1`/`0`).
    pub(crate) fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(_) => Err(ApiError::bad_request(format!(
                "query parameter '{key}' must be true or false"
            ))),
        }
    }
}

/// One request header, picked out for a hot handler: axum's `HeaderMap` extractor copies
/// every header of every request, which showed in a REST GET's profile. `N` is the
/// index into [`PICKED`].
pub(crate) struct Picked<const N: usize>(pub(crate) Option<HeaderValue>);

/// The headers [`Picked`] can take.
const PICKED: [header::HeaderName; 2] = [header::IF_NONE_MATCH, header::CONTENT_TYPE];

/// `If-None-Match`.
pub(crate) type IfNoneMatch = Picked<0>;
/// `Content-Type`.
pub(crate) type ContentType = Picked<1>;

impl<S: Sync, const N: usize> axum::extract::FromRequestParts<S> for Picked<N> {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.headers.get(&PICKED[N]).cloned()))
    }
}

/// Parses a JSON request body, checking content type first.
pub(crate) fn json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    json_body_typed(headers.get(header::CONTENT_TYPE), body)
}

/// [`json_body`] with the `Content-Type` alone.
pub(crate) fn json_body_typed<T: DeserializeOwned>(
    content_type: Option<&HeaderValue>,
    body: &Bytes,
) -> Result<T, ApiError> {
    let ct = content_type.and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if !(is_json_type(ct) || essence.eq_ignore_ascii_case("application/merge-patch+json")) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "expected Content-Type application/json, got '{}'",
                if ct.is_empty() { "(none)" } else { ct }
            ),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid JSON body: {e} (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

/// Like [`json_body`], but an empty body means the type's default (optional bodies).
pub(crate) fn optional_json_body<T: DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    if body.is_empty() {
        Ok(T::default())
    } else {
        json_body(headers, body)
    }
}
