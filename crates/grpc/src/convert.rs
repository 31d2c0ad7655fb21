//! Between protobuf and the Hub: messages go through their proto3 JSON form (so Structs,
//! Values and Timestamps map onto records for free), and `HubError` becomes a gRPC
//! status here and nowhere else.

use polyport_core::HubError;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::Value;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// A message as JSON with proto field names and numbers as numbers.
pub(crate) fn to_json(msg: &DynamicMessage) -> Result<Value, Status> {
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false);
    msg.serialize_with_options(serde_json::value::Serializer, &opts)
        .map_err(|e| Status::internal(format!("cannot read request: {e}")))
}

/// Builds a message from JSON, ignoring keys the message does not have.
pub(crate) fn from_json(desc: &MessageDescriptor, v: Value) -> Result<DynamicMessage, Status> {
    let opts = DeserializeOptions::new().deny_unknown_fields(false);
    DynamicMessage::deserialize_with_options(desc.clone(), v, &opts)
        .map_err(|e| Status::internal(format!("cannot encode {}: {e}", desc.full_name())))
}

/// The one HubError → gRPC status mapping; validation errors carry `google.rpc.BadRequest`
/// field violations in the status details.
pub(crate) fn status(e: HubError) -> Status {
    let code = match &e {
        HubError::CollectionNotFound(_)
        | HubError::NotFound(_)
        | HubError::RecordNotFound { .. }
        | HubError::AutoCreateDisabled(_) => Code::NotFound,
        HubError::AlreadyExists(_) | HubError::Conflict(_) => Code::AlreadyExists,
        HubError::Validation(_)
        | HubError::InvalidId(_)
        | HubError::InvalidTopic(_)
        | HubError::InvalidFilter(_)
        | HubError::InvalidCursor(_)
        | HubError::InvalidRequest(_) => Code::InvalidArgument,
        HubError::VersionMismatch { .. } => Code::FailedPrecondition,
        HubError::PositionUnavailable { .. } | HubError::EpochMismatch { .. } => Code::OutOfRange,
        HubError::Forbidden(_) => Code::PermissionDenied,
        HubError::Unauthenticated(_) => Code::Unauthenticated,
        HubError::SlowConsumer { .. }
        | HubError::LimitReached(_)
        | HubError::RateLimited { .. } => Code::ResourceExhausted,
        HubError::ShuttingDown | HubError::Unavailable(_) => Code::Unavailable,
        HubError::Storage(_) => Code::Internal,
    };
    let fields = e.field_errors();
    let msg = format!("{} ({})", e, e.code());
    if let HubError::RateLimited { retry_after } = &e {
        // google.rpc.RetryInfo: gRPC clients with retry policies read when to come back.
        let mut details = ErrorDetails::new();
        details.set_retry_info(Some(*retry_after));
        return Status::with_error_details(code, msg, details);
    }
    if fields.is_empty() {
        return Status::new(code, msg);
    }
    let mut details = ErrorDetails::new();
    for f in fields {
        details.add_bad_request_violation(f.field.clone(), f.message.clone());
    }
    Status::with_error_details(code, msg, details)
}

/// A string field, empty when absent.
pub(crate) fn str_field<'a>(v: &'a Value, name: &str) -> &'a str {
    v.get(name).and_then(Value::as_str).unwrap_or("")
}

/// An optional unsigned field (absent, or present with presence).
pub(crate) fn u64_field(v: &Value, name: &str) -> Option<u64> {
    v.get(name).and_then(Value::as_u64)
}
