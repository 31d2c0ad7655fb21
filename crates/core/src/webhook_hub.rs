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
use crate::schema::FieldError;
use crate::webhook::{
    Attempt, AttemptOutcome, Delivery, DeliveryPolicy, DeliveryStatus, Endpoint, EndpointSpec,
};

fn not_found(id: &str) -> HubError {
    HubError::NotFound(format!("webhook endpoint '{id}'"))
}

impl Hub {
    /// Installs the delivery engine's rules (secrets, retries, URL safety).
    pub fn set_delivery_policy(&self, policy: Arc<dyn DeliveryPolicy>) {
        *self.inner.delivery_policy.write() = Some(policy);
    }

    fn delivery_policy(&self) -> HubResult<Arc<dyn DeliveryPolicy>> {
        self.inner.delivery_policy.read().clone().ok_or_else(|| {
            HubError::InvalidRequest("webhooks are not available on this server".into())
        })
    }

    async fn check_endpoint(&self, spec: &EndpointSpec) -> HubResult<()> {
        let mut errors = spec.check().err().unwrap_or_default();
        errors.extend(self.delivery_policy()?.check(spec).await);
        match errors.is_empty() {
            true => Ok(()),
            false => Err(HubError::Validation(errors)),
        }
    }

    async fn put_endpoint(&self, ep: Endpoint) -> HubResult<Arc<Endpoint>> {
        match self.write(WriteCommand::PutEndpoint(Box::new(ep))).await? {
            WriteOutcome::Endpoint(e) => {
                self.inner.endpoints_changed.notify_waiters();
                Ok(e)
            }
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
        if spec.secret.is_none() {
            spec.secret = Some(self.delivery_policy()?.new_secret());
        }
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
        .inspect(|ep| self.audit_admin(ctx, "create_endpoint", &ep.id))
    }

    /// Resolves at the next change of endpoints made through this node (created,
    /// updated or disabled); changes made through other nodes are not signalled.
    pub fn endpoints_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.endpoints_changed.notified()
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
        self.put_endpoint(ep)
            .await
            .inspect(|ep| self.audit_admin(ctx, "update_endpoint", &ep.id))
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
        let policy = self.delivery_policy()?;
        let new = match secret {
            Some(s) => s,
            None => policy.new_secret(),
        };
        let probe = EndpointSpec {
            secret: Some(new.clone()),
            ..ep.spec.clone()
        };
        let errors: Vec<FieldError> = policy
            .check(&probe)
            .await
            .into_iter()
            .filter(|e| e.field == "secret")
            .collect();
        if !errors.is_empty() {
            return Err(HubError::Validation(errors));
        }
        ep.previous_secret = ep.spec.secret.replace(new);
        ep.previous_until = Some(
            Utc::now() + chrono::Duration::from_std(overlap).unwrap_or(chrono::Duration::hours(24)),
        );
        ep.updated_at = Utc::now();
        self.put_endpoint(ep)
            .await
            .inspect(|ep| self.audit_admin(ctx, "rotate_endpoint_secret", &ep.id))
    }

    /// Deletes an endpoint with its queue and log.
    pub async fn delete_endpoint(&self, ctx: &AuthContext, id: &str) -> HubResult<()> {
        self.endpoint(ctx, id)?;
        self.write(WriteCommand::DeleteEndpoint(id.to_string()))
            .await?;
        self.audit_admin(ctx, "delete_endpoint", id);
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

    /// The right to deliver endpoint `id`'s queue on this node, when no other node has
    /// it: one node at a time walks an endpoint's queue, in order.
    pub async fn webhook_lease(
        &self,
        ctx: &AuthContext,
        id: &str,
    ) -> HubResult<Option<Box<dyn crate::cluster::Lease>>> {
        self.authorize(ctx, Action::Admin)?;
        self.inner.store.try_lease(&format!("webhook:{id}")).await
    }

    /// The oldest pending deliveries of an endpoint, at most `limit`, in sequence order;
    /// with `due_by`, only those due by then.
    pub async fn next_deliveries(
        &self,
        ctx: &AuthContext,
        id: &str,
        limit: usize,
        due_by: Option<chrono::DateTime<chrono::Utc>>,
    ) -> HubResult<Vec<Delivery>> {
        self.authorize(ctx, Action::Admin)?;
        self.inner.store.next_deliveries(id, limit, due_by).await
    }

    /// Durable events by sequence (ascending), each `None` once it left the log. Read
    /// in one pass over their range when they lie close together (an endpoint's queue
    /// usually does), one by one otherwise.
    pub async fn events(
        &self,
        ctx: &AuthContext,
        seqs: &[u64],
    ) -> HubResult<Vec<Option<EventRef>>> {
        self.authorize(ctx, Action::Admin)?;
        let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) else {
            return Ok(Vec::new());
        };
        let span = last.saturating_sub(first) as usize + 1;
        let mut found = std::collections::HashMap::with_capacity(seqs.len());
        if span <= seqs.len().saturating_mul(4).max(64) {
            for e in self
                .inner
                .store
                .read_events(first.saturating_sub(1), span)
                .await?
            {
                if let Some(s) = e.seq {
                    found.insert(s, e);
                }
            }
        } else {
            for &s in seqs {
                if let Some(e) = self
                    .inner
                    .store
                    .read_events(s.saturating_sub(1), 1)
                    .await?
                    .pop()
                    && e.seq == Some(s)
                {
                    found.insert(s, e);
                }
            }
        }
        Ok(seqs.iter().map(|s| found.remove(s)).collect())
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
