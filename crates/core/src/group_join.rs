//! Named groups on the cluster engine: one dispatcher per group in the deployment.
//!
//! The node that takes a group's lease runs its dispatcher (the same code as on the
//! embedded engine: record filters, rules, redelivery, prefetch per member); members on
//! other nodes join it through the [`GroupLink`]. A member's subscription never sees
//! which: it is fed by a pump that, when the node running the group goes away (its lease
//! lost, its process killed), joins wherever the group runs next, which resumes from the
//! group's saved position. What the old dispatcher had handed out unacknowledged comes
//! again (at least once), as after a restart of the embedded engine.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cluster::{GroupLink, MemberLink};
use crate::engine::Store;
use crate::error::{HubError, HubResult};
use crate::group::group_keys;
use crate::group::{Claim, Ctl, Hosting, Member};
use crate::hub::Hub;
use crate::query::Filter;
use crate::subscription::{
    AckPolicy, Inner, Overflow, RecordSelector, SubscribeRequest, Subscription,
};
use crate::topic::TopicFilter;

/// How long a join looks for the node running a group (one may be taking it over).
const JOIN_WAIT: Duration = Duration::from_secs(5);
/// Between attempts while the lease is changing hands.
const RETRY: Duration = Duration::from_millis(20);

/// A group join as it travels to the node running the group: the subscription request,
/// already authorized on the node the client is connected to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupJoin {
    /// The group's key: which group (it routes the join).
    pub key: String,
    group: String,
    filters: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    records: Option<Records>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    epoch: Option<String>,
    #[serde(default)]
    strict: bool,
    #[serde(default)]
    notify_overflow: bool,
    #[serde(default)]
    position_by_name: bool,
    /// Prefetch and ack timeout in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ack: Option<(usize, u64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    queue: Option<usize>,
    #[serde(default)]
    adapter_managed: bool,
    #[serde(default)]
    durable_only: bool,
    /// Who creates the group if it is new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Records {
    collection: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    filter: Option<String>,
}

impl GroupJoin {
    /// The join of a named group (`req.group` is set).
    pub(crate) fn new(req: &SubscribeRequest, owner: Option<&str>) -> Self {
        let group = req.group.clone().unwrap_or_default();
        let (key, _) = group_keys(&group, &req.all_filters(), req, req.ack.is_some());
        Self {
            key,
            group,
            filters: req.filters.iter().map(|f| f.as_str().to_string()).collect(),
            records: req.records.as_ref().map(|r| Records {
                collection: r.collection.clone(),
                id: r.id.clone(),
                filter: r.filter.as_ref().map(|f| f.to_string()),
            }),
            since: req.since,
            epoch: req.epoch.clone(),
            strict: req.strict,
            notify_overflow: req.overflow == Overflow::Notify,
            position_by_name: req.position_by_name,
            ack: req
                .ack
                .map(|a| (a.prefetch, a.ack_timeout.as_millis() as u64)),
            queue: req.queue,
            adapter_managed: req.adapter_managed,
            durable_only: req.durable_only,
            owner: owner.map(str::to_string),
        }
    }

    /// The request again, on the node running the group.
    fn request(&self) -> HubResult<SubscribeRequest> {
        let filters = self
            .filters
            .iter()
            .map(|f| TopicFilter::new(f))
            .collect::<Result<Vec<_>, _>>()?;
        let records = match &self.records {
            None => None,
            Some(r) => Some(RecordSelector {
                collection: r.collection.clone(),
                id: r.id.clone(),
                filter: r.filter.as_deref().map(Filter::parse).transpose()?,
            }),
        };
        Ok(SubscribeRequest {
            filters,
            records,
            since: self.since,
            epoch: self.epoch.clone(),
            strict: self.strict,
            overflow: match self.notify_overflow {
                true => Overflow::Notify,
                false => Overflow::Disconnect,
            },
            group: Some(self.group.clone()),
            position_by_name: self.position_by_name,
            ack: self.ack.map(|(prefetch, ms)| AckPolicy {
                prefetch,
                ack_timeout: Duration::from_millis(ms),
            }),
            queue: self.queue,
            adapter_managed: self.adapter_managed,
            durable_only: self.durable_only,
        })
    }

    /// How many items a member of this join holds.
    pub fn member_queue(&self) -> usize {
        crate::group::member_queue(self.ack.map(|(p, _)| p))
    }
}

/// The claim of a group's dispatcher on the cluster engine: its lease, then answering
/// other nodes' joins.
pub(crate) fn claim(store: Arc<dyn Store>, link: Arc<dyn GroupLink>, key: &str) -> Claim {
    let key = key.to_string();
    Arc::new(move || {
        let (store, link, key) = (store.clone(), link.clone(), key.clone());
        async move {
            let Some(lease) = store.try_lease(&format!("group\n{key}")).await? else {
                return Ok(None);
            };
            let host = link.host(&key).await?;
            Ok(Some(Hosting { lease, _host: host }))
        }
        .boxed()
    })
}

impl Hub {
    /// Joins a named group wherever it runs, behind a pump that follows it to another
    /// node when it moves.
    pub(crate) async fn join_across(
        &self,
        link: Arc<dyn GroupLink>,
        join: GroupJoin,
    ) -> HubResult<Member> {
        let req = join.request()?;
        let inner = self.join_somewhere(&link, &join, &req).await?;
        let (outer, end) =
            crate::group::linked(join.member_queue(), self.shutdown_token().child_token());
        tokio::spawn(pump(self.clone(), link, join, req, inner, end));
        Ok(outer.0)
    }

    /// A join from another node: served only if this node runs the group or can take
    /// its lease (`Ok(None)`: it cannot; the joiner asks again).
    pub async fn join_hosted(&self, join: &GroupJoin) -> HubResult<Option<Subscription>> {
        let Some(link) = self.inner.group_link.get().cloned() else {
            return Ok(None);
        };
        let req = join.request()?;
        let state = self.inner.store.log_state();
        let member = self
            .join_here(&req, join.owner.as_deref().map(Arc::from), Some(link))
            .await?;
        Ok(member.map(|m| Subscription {
            inner: Inner::Member(m),
            epoch: state.epoch,
            start_position: req.since.unwrap_or(state.last_seq),
        }))
    }

    async fn join_somewhere(
        &self,
        link: &Arc<dyn GroupLink>,
        join: &GroupJoin,
        req: &SubscribeRequest,
    ) -> HubResult<Member> {
        let deadline = Instant::now() + JOIN_WAIT;
        let owner = join.owner.as_deref().map(Arc::<str>::from);
        loop {
            if let Some(m) = self
                .join_here(req, owner.clone(), Some(link.clone()))
                .await?
            {
                return Ok(m);
            }
            if let Some(m) = link.join(join, join.member_queue()).await? {
                return Ok(m.0);
            }
            if Instant::now() > deadline {
                return Err(HubError::Unavailable(format!(
                    "no node could run group '{}' (its lease is held, but the node holding it does not answer)",
                    join.group
                )));
            }
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// Feeds a member from wherever its group runs, and joins again when that goes away.
async fn pump(
    hub: Hub,
    link: Arc<dyn GroupLink>,
    mut join: GroupJoin,
    mut req: SubscribeRequest,
    mut inner: Member,
    mut end: MemberLink,
) {
    let shutdown = hub.shutdown_token();
    loop {
        tokio::select! {
            it = inner.next() => match it {
                Some(Ok(item)) => {
                    if !end.send(Ok(item)).await {
                        return;
                    }
                }
                Some(Err(HubError::Unavailable(why))) => {
                    tracing::debug!(group = %join.group, %why, "group moved; joining it again");
                    match rejoin(&hub, &link, &join, &req, &end).await {
                        Some(m) => inner = m,
                        None => return,
                    }
                }
                None if !shutdown.is_cancelled() => {
                    match rejoin(&hub, &link, &join, &req, &end).await {
                        Some(m) => inner = m,
                        None => return,
                    }
                }
                None => return,
                Some(Err(e)) => {
                    end.send(Err(e)).await;
                    return;
                }
            },
            c = end.recv_ctl() => match c {
                Some(Ctl::Ack { seq }) => inner.ack(seq),
                Some(Ctl::Refilter { topics, filters, at, make, done }) => {
                    // Kept for the next join; passed on to a dispatcher running here. One
                    // running elsewhere is refiltered by its own node (`refilter_hosted`).
                    join.filters = topics.iter().map(|f| f.as_str().to_string()).collect();
                    req.filters = topics.clone();
                    if !inner.dispatched_here() {
                        let _ = done.send(Ok(()));
                        continue;
                    }
                    let c = Ctl::Refilter { topics, filters, at, make, done };
                    // A dispatcher gone meanwhile: the next join has the filters.
                    if let Err(mpsc::error::SendError(Ctl::Refilter { done, .. })) = inner.ctl.send(c) {
                        let _ = done.send(Ok(()));
                    }
                }
                Some(Ctl::Join { .. }) => {}
                Some(Ctl::Leave { .. }) | None => return,
            },
        }
    }
}

/// Joins again until it works, the member leaves or the hub shuts down.
async fn rejoin(
    hub: &Hub,
    link: &Arc<dyn GroupLink>,
    join: &GroupJoin,
    req: &SubscribeRequest,
    end: &MemberLink,
) -> Option<Member> {
    let shutdown = hub.shutdown_token();
    let mut backoff = RETRY;
    loop {
        if end.is_closed() || shutdown.is_cancelled() {
            return None;
        }
        match hub.join_somewhere(link, join, req).await {
            Ok(m) => return Some(m),
            Err(e) => {
                tracing::warn!(group = %join.group, error = %e, "joining the group again failed; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return None,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
