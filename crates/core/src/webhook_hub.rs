//! The Hub's webhook verbs: the endpoint registry for every face, and the few calls the
//! delivery engine needs (next delivery, the event, recording an attempt).

use std::sync::Arc;

use chrono::Utc;
use serde_json::Value;

use crate::auth::{Action, AuthContext};
use crate::engine::{Redeliver, WriteCommand, WriteOutcome};
use crate::error::{HubError, HubResult};
use crate::event::EventRef;
use crate::hub::{Hub, unexpected};
use crate::record::merge_patch;
use crate::schema::{FieldError, Rule};
use crate::webhook::{
    Attempt, AttemptOutcome, Delivery, DeliveryStatus, Endpoint, EndpointSpec, UrlGuard, new_secret,
};

fn not_found(id: &str) -> HubError {
    HubError::NotFound(format!("webhook endpoint '{id}'"))
}

impl Hub {
    /// Installs the SSRF guard the registry checks URLs with.
    pub fn set_url_guard(&self, guard: Arc<dyn UrlGuard>) {
        *self.inner.url_guard.write() = Some(guard);
    }

    async fn check_endpoint(&self, spec: &EndpointSpec) -> HubResult<()> {
        spec.check().map_err(HubError::Validation)?;
        let guard = self.inner.url_guard.read().clone();
        if let Some(g) = guard
            && let Err(reason) = g.check(&spec.url).await
        {
            return Err(HubError::Validation(vec![FieldError::new(
                "url",
                Rule::Format,
                format!("is refused: {reason}"),
            )]));
        }
        Ok(())
    }

    async fn put_endpoint(&self, ep: Endpoint) -> HubResult<Arc<Endpoint>> {
        match self.write(WriteCommand::PutEndpoint(Box::new(ep))).await? {
            WriteOutcome::Endpoint(e) => Ok(e),
            other => Err(unexpected(other)),
        }
    }

    /// Registers an endpoint; a secret is generated unless one is given.
    pub async fn create_endpoint(
        &self,
        ctx: &AuthContext,
        mut spec: EndpointSpec,
    ) -> HubResult<Arc<Endpoint>> {
        self.authorize(ctx, Action::Admin)?;
        self.check_endpoint(&spec).await?;
        spec.secret.get_or_insert_with(new_secret);
        let now = Utc::now();
        self.put_endpoint(Endpoint {
            id: format!("ep_{}", crate::record::new_id()),
            spec,
            previous_secret: None,
            previous_until: None,
            failing_since: None,
            disabled_reason: None,
            created_at: now,
            updated_at: now,
        })
        .await
    }

    /// All endpoints.
    pub fn endpoints(&self, ctx: &AuthContext) -> HubResult<Arc<Vec<Arc<Endpoint>>>> {
        self.authorize(ctx, Action::Admin)?;
        Ok(self.inner.store.endpoints())
    }

    /// One endpoint.
    pub fn endpoint(&self, ctx: &AuthContext, id: &str) -> HubResult<Arc<Endpoint>> {
        self.authorize(ctx, Action::Admin)?;
        self.inner
            .store
            .endpoints()
            .iter()
            .find(|e| e.id == id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    /// Merge-patches an endpoint's definition. Re-enabling clears the server's reason
    /// for disabling it.
    pub async fn update_endpoint(
        &self,
        ctx: &AuthContext,
        id: &str,
        patch: Value,
    ) -> HubResult<Arc<Endpoint>> {
        let current = self.endpoint(ctx, id)?;
        let mut doc =
            serde_json::to_value(&current.spec).map_err(|e| HubError::Storage(e.to_string()))?;
        merge_patch(&mut doc, &patch);
        let spec: EndpointSpec = serde_json::from_value(doc)
            .map_err(|e| HubError::InvalidRequest(format!("invalid endpoint: {e}")))?;
        self.check_endpoint(&spec).await?;
        let mut ep = (*current).clone();
        if spec.enabled && !ep.spec.enabled {
            ep.disabled_reason = None;
            ep.failing_since = None;
        }
        if spec.secret.is_none() {
            return Err(HubError::InvalidRequest(
                "the secret cannot be removed; rotate it instead".into(),
            ));
        }
        ep.spec = spec;
        ep.updated_at = Utc::now();
        self.put_endpoint(ep).await
    }

    /// Replaces the signing secret; the old one keeps signing too for `overlap` so
    /// receivers can switch without dropping deliveries.
    pub async fn rotate_endpoint_secret(
        &self,
        ctx: &AuthContext,
        id: &str,
        secret: Option<String>,
        overlap: std::time::Duration,
    ) -> HubResult<Arc<Endpoint>> {
        let mut ep = (*self.endpoint(ctx, id)?).clone();
        let new = secret.unwrap_or_else(new_secret);
        if !crate::webhook::valid_secret(&new) {
            return Err(HubError::Validation(vec![FieldError::new(
                "secret",
                Rule::Format,
                "must be whsec_ followed by base64 of 24 to 64 bytes",
            )]));
        }
        ep.previous_secret = ep.spec.secret.replace(new);
        ep.previous_until = Some(
            Utc::now() + chrono::Duration::from_std(overlap).unwrap_or(chrono::Duration::hours(24)),
        );
        ep.updated_at = Utc::now();
        self.put_endpoint(ep).await
    }

    /// Deletes an endpoint with its queue and log.
    pub async fn delete_endpoint(&self, ctx: &AuthContext, id: &str) -> HubResult<()> {
        self.endpoint(ctx, id)?;
        self.write(WriteCommand::DeleteEndpoint(id.to_string()))
            .await?;
        Ok(())
    }

    /// Deliveries of an endpoint, newest first.
    pub async fn deliveries(
        &self,
        ctx: &AuthContext,
        id: &str,
        status: Option<DeliveryStatus>,
        before: Option<u64>,
        limit: usize,
    ) -> HubResult<Vec<Delivery>> {
        self.endpoint(ctx, id)?;
        self.inner
            .store
            .list_deliveries(id, status, before, limit)
            .await
    }

    /// One delivery and its attempt log.
    pub async fn delivery(
        &self,
        ctx: &AuthContext,
        id: &str,
        seq: u64,
    ) -> HubResult<(Delivery, Vec<Attempt>)> {
        self.endpoint(ctx, id)?;
        let d = self
            .inner
            .store
            .get_delivery(id, seq)
            .await?
            .ok_or_else(|| HubError::NotFound(format!("delivery of event {seq} to '{id}'")))?;
        let attempts = self.inner.store.list_attempts(id, seq).await?;
        Ok((d, attempts))
    }

    /// Queues deliveries again (one event, the dead-letter list, or every event since a
    /// sequence); returns how many.
    pub async fn redeliver(&self, ctx: &AuthContext, id: &str, which: Redeliver) -> HubResult<u64> {
        self.endpoint(ctx, id)?;
        match self
            .write(WriteCommand::Redeliver {
                endpoint_id: id.to_string(),
                which,
            })
            .await?
        {
            WriteOutcome::Requeued(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    // ----- for the delivery engine -----

    /// The oldest pending delivery of an endpoint.
    pub async fn next_delivery(&self, ctx: &AuthContext, id: &str) -> HubResult<Option<Delivery>> {
        self.authorize(ctx, Action::Admin)?;
        self.inner.store.next_delivery(id).await
    }

    /// One durable event by sequence, if it is still in the log.
    pub async fn event(&self, ctx: &AuthContext, seq: u64) -> HubResult<Option<EventRef>> {
        self.authorize(ctx, Action::Admin)?;
        let mut v = self
            .inner
            .store
            .read_events(seq.saturating_sub(1), 1)
            .await?;
        Ok(v.pop().filter(|e| e.seq == Some(seq)))
    }

    /// Records an attempt and its consequence (retry time, dead-letter, disabling).
    pub async fn record_attempt(
        &self,
        ctx: &AuthContext,
        endpoint_id: &str,
        seq: u64,
        attempt: Attempt,
        outcome: AttemptOutcome,
    ) -> HubResult<()> {
        self.authorize(ctx, Action::Admin)?;
        self.write(WriteCommand::RecordAttempt {
            endpoint_id: endpoint_id.to_string(),
            seq,
            attempt,
            outcome,
        })
        .await?;
        Ok(())
    }
}
