//! The `polyport.v1.Webhooks` service: endpoint registry CRUD.

use serde_json::{Value, json};
use tonic::Status;

use super::Handlers;
use crate::convert::{status, str_field};

impl Handlers {
    pub(super) fn webhooks_list(&self) -> Result<Value, Status> {
        let eps = self.hub.endpoints(&self.ctx).map_err(status)?;
        let eps: Vec<_> = eps.iter().map(|e| e.redacted()).collect();
        Ok(json!({ "endpoints": eps }))
    }

    pub(super) async fn webhooks_create(&self, v: &Value) -> Result<Value, Status> {
        let spec = endpoint_spec(v.get("endpoint").cloned().unwrap_or(Value::Null))?;
        Ok(json!(
            self.hub
                .create_endpoint(&self.ctx, spec)
                .await
                .map_err(status)?
        ))
    }

    pub(super) async fn webhooks_update(&self, v: &Value) -> Result<Value, Status> {
        let patch = v.get("patch").cloned().unwrap_or_else(|| json!({}));
        Ok(json!(
            self.hub
                .update_endpoint(&self.ctx, str_field(v, "id"), patch)
                .await
                .map_err(status)?
                .redacted()
        ))
    }

    pub(super) async fn webhooks_delete(&self, v: &Value) -> Result<Value, Status> {
        self.hub
            .delete_endpoint(&self.ctx, str_field(v, "id"))
            .await
            .map_err(status)?;
        Ok(json!({}))
    }
}

/// The registry's spec from a `WebhookEndpoint` message (server-assigned fields and
/// proto3 empty values dropped).
fn endpoint_spec(v: Value) -> Result<polyport_core::webhook::EndpointSpec, Status> {
    const SPEC: &[&str] = &[
        "url",
        "event_types",
        "topics",
        "headers",
        "enabled",
        "description",
        "rate_limit",
        "retry_schedule",
        "concurrency",
        "secret",
    ];
    let mut m = match v {
        Value::Object(m) => m,
        _ => return Err(Status::invalid_argument("endpoint is required")),
    };
    m.retain(|k, v| SPEC.contains(&k.as_str()) && *v != json!("") && !v.is_null());
    serde_json::from_value(Value::Object(m))
        .map_err(|e| Status::invalid_argument(format!("invalid endpoint: {e}")))
}
