//! `webhook_list`, `webhook_create`, `webhook_update`, `webhook_delete`: the endpoint
//! registry, as over REST.

use polyport_core::HubError;
use polyport_core::webhook::EndpointSpec;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Session;

#[derive(Deserialize)]
pub(super) struct List {}

#[derive(Deserialize)]
pub(super) struct Create {
    endpoint: EndpointSpec,
}

#[derive(Deserialize)]
pub(super) struct Update {
    endpoint_id: String,
    patch: Value,
}

#[derive(Deserialize)]
pub(super) struct Delete {
    endpoint_id: String,
}

impl Session {
    pub(super) fn webhook_list(&mut self) -> Result<Value, HubError> {
        let eps = self.hub.endpoints(&self.ctx)?;
        Ok(json!({ "items": *eps }))
    }

    pub(super) async fn webhook_create(&mut self, op: Create) -> Result<Value, HubError> {
        let ep = self.hub.create_endpoint(&self.ctx, op.endpoint).await?;
        Ok(json!({ "endpoint": ep }))
    }

    pub(super) async fn webhook_update(&mut self, op: Update) -> Result<Value, HubError> {
        let ep = self
            .hub
            .update_endpoint(&self.ctx, &op.endpoint_id, op.patch)
            .await?;
        Ok(json!({ "endpoint": ep }))
    }

    pub(super) async fn webhook_delete(&mut self, op: Delete) -> Result<Value, HubError> {
        self.hub.delete_endpoint(&self.ctx, &op.endpoint_id).await?;
        Ok(json!({ "endpoint_id": op.endpoint_id }))
    }
}
