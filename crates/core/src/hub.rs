//! The Hub: the one facade every protocol adapter talks to.
//!
//! It is cheap to clone (one `Arc`). Every verb takes an [`AuthContext`] and asks the
//! [`Policy`] first, so no adapter can bypass authorization. Storage and fanout are behind
//! the [`Store`] and [`Bus`] seams; adapters never see either. This file holds the
//! lifecycle, authorization, adapter state and events; the collection and record verbs
//! are in `records_hub.rs`, the webhook ones in `webhook_hub.rs`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth::{Action, AllowAll, AuthContext, Directory, Policy};
use crate::bus::Bus;
use crate::engine::{LogState, Store, WriteCommand, WriteOutcome};
use crate::error::{HubError, HubResult};
use crate::event::{Durability, EventDraft, EventRef, Notice};
use crate::group::{GroupSpawn, Groups, group_keys, group_owner};
use crate::hot_metrics::HotCounter;
use crate::record::validate_id;
use crate::subscription::{Direct, Inner, Overflow, SubscribeRequest, Subscription};
use crate::topic::TopicFilter;

static PUBLISHED_DURABLE: HotCounter =
    HotCounter::labelled("polyport_events_published_total", "durable", "true");
static PUBLISHED_EPHEMERAL: HotCounter =
    HotCounter::labelled("polyport_events_published_total", "durable", "false");

/// A submitted publish, resolving once it is published.
pub type PendingPublish =
    std::pin::Pin<Box<dyn std::future::Future<Output = HubResult<PublishReceipt>> + Send>>;

/// Hub settings.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Writing to an unknown collection creates it schemaless.
    pub auto_create_collections: bool,
    /// Per-subscriber queue depth before lag handling kicks in.
    pub subscriber_queue: usize,
    /// Topics whose events are never logged (unless the publisher insists on durable).
    pub ephemeral_topics: Vec<TopicFilter>,
    /// Default ack timeout for acked subscriptions.
    pub ack_timeout: Duration,
    /// Upper bound on a member's prefetch window.
    pub max_prefetch: usize,
    /// Collections there may be before a write stops creating new ones by itself, so a
    /// client writing to random names cannot fill the catalogue.
    pub max_auto_collections: usize,
    /// Requests per identity ([`crate::rate`]); `None`: unlimited.
    pub request_rate: Option<crate::rate::RateLimit>,
    /// Named groups (saved positions) one identity may create.
    pub max_groups_per_identity: usize,
    /// Topic filters one caller's subscription may have (each is routed on every
    /// publish).
    pub max_filters_per_subscription: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            auto_create_collections: true,
            subscriber_queue: 1024,
            ephemeral_topics: Vec::new(),
            ack_timeout: Duration::from_secs(30),
            max_prefetch: 10_000,
            max_auto_collections: 1000,
            request_rate: None,
            max_groups_per_identity: 1000,
            max_filters_per_subscription: 256,
        }
    }
}

/// When a write must hold: the record's version must equal this.
pub type ExpectedVersion = Option<u64>;

/// The result of a publish.
#[derive(Clone, Debug)]
pub struct PublishReceipt {
    /// The event as published.
    pub event: EventRef,
}

pub(crate) struct HubInner {
    pub(crate) store: Arc<dyn Store>,
    bus: Bus,
    groups: Arc<Groups>,
    policy: Box<dyn Policy>,
    pub(crate) identities: Directory,
    pub(crate) audit: Option<tokio::sync::mpsc::Sender<crate::audit::Entry>>,
    pub(crate) config: HubConfig,
    pub(crate) rates: crate::rate::Rates,
    shutdown: CancellationToken,
    pub(crate) collections_gen: watch::Sender<u64>,
    pub(crate) delivery_policy:
        parking_lot::RwLock<Option<Arc<dyn crate::webhook::DeliveryPolicy>>>,
    /// Which nodes serve this deployment; one ([`crate::cluster::Alone`]) until the
    /// binary says otherwise.
    membership: parking_lot::RwLock<Arc<dyn crate::cluster::Membership>>,
    /// Carries ephemeral events to the other nodes (cluster engine with a bus). Read on
    /// every ephemeral publish: set once, so reading it is a plain load.
    relay: std::sync::OnceLock<Arc<dyn crate::cluster::Relay>>,
    /// Fires when the relay is set (announcements that need it wait for it).
    relay_set: tokio::sync::Notify,
    /// Carries named groups' members between nodes (cluster engine with a bus).
    pub(crate) group_link: std::sync::OnceLock<Arc<dyn crate::cluster::GroupLink>>,
    /// Whether this node follows identity changes made through others (cluster engine).
    pub(crate) identities_followed: std::sync::atomic::AtomicBool,
    /// What a change to the stored identities waits on (the cluster engine).
    pub(crate) identities_agreed: std::sync::OnceLock<crate::announce::Agreement>,
    /// Signalled when a webhook endpoint is put through this node.
    pub(crate) endpoints_changed: tokio::sync::Notify,
}

/// The facade.
#[derive(Clone)]
pub struct Hub {
    pub(crate) inner: Arc<HubInner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

impl Hub {
    /// Wires a hub over a store and the bus the store delivers committed events to.
    /// With no identity source every caller is let in with every right.
    pub fn new(store: Arc<dyn Store>, bus: Bus, config: HubConfig) -> Self {
        Self::with_policy(store, bus, config, Box::new(AllowAll))
    }

    /// Like [`Hub::new`] with an explicit authorization policy.
    pub fn with_policy(
        store: Arc<dyn Store>,
        bus: Bus,
        config: HubConfig,
        policy: Box<dyn Policy>,
    ) -> Self {
        Self::with_auth(store, bus, config, Directory::open(), policy)
    }

    /// Like [`Hub::new`] with identity sources and a policy. Stored users and keys are
    /// read by [`Hub::load_identities`].
    pub fn with_auth(
        store: Arc<dyn Store>,
        bus: Bus,
        config: HubConfig,
        identities: Directory,
        policy: Box<dyn Policy>,
    ) -> Self {
        let inner = Arc::new_cyclic(|me| HubInner {
            store,
            bus,
            groups: Arc::default(),
            policy,
            identities,
            audit: crate::audit::start(me.clone()),
            rates: crate::rate::Rates::new(config.request_rate),
            config,
            shutdown: CancellationToken::new(),
            collections_gen: watch::Sender::new(0),
            delivery_policy: parking_lot::RwLock::new(None),
            membership: parking_lot::RwLock::new(Arc::new(crate::cluster::Alone(
                crate::cluster::Node::this_process(Default::default()),
            ))),
            relay: std::sync::OnceLock::new(),
            relay_set: tokio::sync::Notify::new(),
            group_link: std::sync::OnceLock::new(),
            identities_followed: Default::default(),
            identities_agreed: Default::default(),
            endpoints_changed: tokio::sync::Notify::new(),
        });
        Self { inner }
    }

    /// Sets the engine's membership (the binary does, once its listeners are bound).
    pub fn set_membership(&self, m: Arc<dyn crate::cluster::Membership>) {
        *self.inner.membership.write() = m;
    }

    /// Whether this node should get traffic: its store reaches its database and its
    /// cluster membership holds. The reason when not.
    pub fn ready(&self) -> Result<(), String> {
        self.inner.store.ready()?;
        self.membership().ready()
    }

    /// `cluster` when the store or the membership is shared with other nodes, else
    /// `embedded`.
    pub fn engine(&self) -> &'static str {
        match self.inner.store.engine() {
            "embedded" => self.membership().engine(),
            shared => shared,
        }
    }

    /// This process among the nodes: one id from the hub's start on, the same before
    /// and after the cluster membership is set (see `serve`).
    pub fn node_id(&self) -> String {
        self.membership().me().id
    }

    /// Which nodes serve this deployment.
    pub fn membership(&self) -> Arc<dyn crate::cluster::Membership> {
        self.inner.membership.read().clone()
    }

    /// Fires when the hub shuts down; adapters end their streams on it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Ends every subscription and flushes the store.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.store.close().await;
    }

    /// Asks the policy; for adapters with side effects of their own (MQTT retained
    /// messages) that must not happen for a call the Hub would refuse.
    pub fn authorize(&self, ctx: &AuthContext, action: Action<'_>) -> HubResult<()> {
        let r = self.inner.policy.authorize(ctx, action);
        if let Err(HubError::Forbidden(reason)) = &r {
            self.audit_refused(ctx, &format!("{action:?}"), reason);
        }
        r
    }

    pub(crate) async fn write(&self, cmd: WriteCommand) -> HubResult<WriteOutcome> {
        if self.inner.shutdown.is_cancelled() {
            return Err(HubError::ShuttingDown);
        }
        self.inner.store.write(cmd).await
    }

    // ----- adapter state -----

    /// Durably sets (`Some`) or removes (`None`) one entry of an adapter's own state —
    /// what a protocol must remember across restarts that is not a record or an event
    /// (MQTT sessions and retained messages, AMQP declarations). Returns once committed.
    pub async fn put_state(
        &self,
        ctx: &AuthContext,
        namespace: &str,
        key: &str,
        value: Option<Bytes>,
    ) -> HubResult<()> {
        self.authorize(ctx, Action::AdapterState(namespace))?;
        self.write(WriteCommand::PutState {
            namespace: namespace.to_string(),
            key: key.to_string(),
            value,
        })
        .await
        .map(|_| ())
    }

    /// Every entry of one namespace of adapter state.
    pub async fn load_state(
        &self,
        ctx: &AuthContext,
        namespace: &str,
    ) -> HubResult<Vec<(String, Bytes)>> {
        self.authorize(ctx, Action::AdapterState(namespace))?;
        self.inner.store.load_state(namespace).await
    }

    /// One entry of adapter state: what another node may have stored since this one
    /// loaded the namespace (the cluster engine).
    pub async fn get_state(
        &self,
        ctx: &AuthContext,
        namespace: &str,
        key: &str,
    ) -> HubResult<Option<Bytes>> {
        self.authorize(ctx, Action::AdapterState(namespace))?;
        self.inner.store.get_state(namespace, key).await
    }

    /// Forgets every group whose name starts with `prefix` (see [`Hub::delete_group`]).
    pub async fn delete_groups_with_prefix(
        &self,
        ctx: &AuthContext,
        prefix: &str,
    ) -> HubResult<()> {
        self.authorize(ctx, Action::AdapterState("groups"))?;
        self.write(WriteCommand::DeleteConsumers {
            prefix: prefix.to_string(),
        })
        .await
        .map(|_| ())
    }

    /// Forgets where a named group stands for every filter set it was used with, so a
    /// later join with the same name starts live (MQTT clean start, session expiry).
    pub async fn delete_group(&self, ctx: &AuthContext, name: &str) -> HubResult<()> {
        self.authorize(ctx, Action::AdapterState("groups"))?;
        self.write(WriteCommand::DeleteConsumers {
            prefix: format!("{name}\n"),
        })
        .await
        .map(|_| ())
    }

    // ----- events -----

    /// Publishes an event. Durable events are acknowledged after they are in the log.
    pub async fn publish(&self, ctx: &AuthContext, draft: EventDraft) -> HubResult<PublishReceipt> {
        self.submit_publish(ctx, draft).await?.await
    }

    /// [`Hub::publish`] in two steps: returns once the event is queued (after the
    /// authorization check), with what resolves when it is published — durable, with its
    /// sequence. Publishes submitted one after another are sequenced in that order, so
    /// an adapter can pipeline a client's messages and keep them in order (MQTT 4.6).
    pub async fn submit_publish(
        &self,
        ctx: &AuthContext,
        mut draft: EventDraft,
    ) -> HubResult<PendingPublish> {
        self.authorize(ctx, Action::Publish(draft.topic.as_str()))?;
        if self.inner.shutdown.is_cancelled() {
            return Err(HubError::ShuttingDown);
        }
        let durable = match draft.durability {
            Durability::Durable => true,
            Durability::Ephemeral => false,
            Durability::Auto | Durability::Logged => !self
                .inner
                .config
                .ephemeral_topics
                .iter()
                .any(|f| f.matches(&draft.topic)),
        };
        if durable {
            &PUBLISHED_DURABLE
        } else {
            &PUBLISHED_EPHEMERAL
        }
        .increment(1);
        if durable {
            // The store sees Durable or Logged: whether the acknowledgement waits for
            // the disk.
            if draft.durability != Durability::Logged {
                draft.durability = Durability::Durable;
            }
            if self.inner.shutdown.is_cancelled() {
                return Err(HubError::ShuttingDown);
            }
            let pending = self
                .inner
                .store
                .submit(WriteCommand::Publish {
                    draft,
                    origin: ctx.origin,
                    sender: ctx.sender.clone(),
                })
                .await?;
            Ok(Box::pin(async move {
                match pending.await? {
                    WriteOutcome::Published(event) => Ok(PublishReceipt { event }),
                    other => Err(unexpected(other)),
                }
            }))
        } else {
            let event = self.fan_out_now(ctx, draft);
            Ok(Box::pin(std::future::ready(Ok(PublishReceipt { event }))))
        }
    }

    /// Publishes a message in memory only, whatever its draft or the topic configuration
    /// say, and returns it once every subscriber has been offered it: the path for
    /// fire-and-forget messages (MQTT QoS 0), which needs no I/O and so nothing to await.
    pub fn publish_ephemeral(&self, ctx: &AuthContext, draft: EventDraft) -> HubResult<EventRef> {
        self.authorize(ctx, Action::Publish(draft.topic.as_str()))?;
        if self.inner.shutdown.is_cancelled() {
            return Err(HubError::ShuttingDown);
        }
        PUBLISHED_EPHEMERAL.increment(1);
        Ok(self.fan_out_now(ctx, draft))
    }

    /// An ephemeral event from `draft`, offered to every matching subscriber.
    fn fan_out_now(&self, ctx: &AuthContext, draft: EventDraft) -> EventRef {
        let event = Arc::new(
            crate::event::Event::new(
                None,
                crate::record::new_id(),
                draft.topic,
                draft
                    .event_type
                    .unwrap_or_else(|| crate::event::DEFAULT_EVENT_TYPE.into()),
                chrono::Utc::now(),
                draft.content_type,
                draft.headers,
                draft.payload,
                ctx.origin,
            )
            .with_attrs(draft.attrs, ctx.sender.clone()),
        );
        self.inner.bus.deliver(&event);
        if let Some(r) = self.inner.relay.get() {
            r.send(&event);
        }
        event
    }

    /// Sets what carries this node's ephemeral events to the other nodes (the cluster
    /// engine with a bus; once, at start). Later calls are ignored.
    pub fn set_relay(&self, r: Arc<dyn crate::cluster::Relay>) {
        let _ = self.inner.relay.set(r);
        self.inner.relay_set.notify_waiters();
    }

    /// Returns once ephemeral events reach the other nodes (a relay is set), or when
    /// the hub shuts down.
    pub(crate) async fn relay_ready(&self) {
        let set = self.inner.relay_set.notified();
        if self.inner.relay.get().is_none() {
            tokio::select! {
                _ = set => {}
                _ = self.inner.shutdown.cancelled() => {}
            }
        }
    }

    /// Sets what carries named groups' members between nodes (the cluster engine with a
    /// bus; once, at start, before the first subscription). Later calls are ignored.
    pub fn set_group_link(&self, l: Arc<dyn crate::cluster::GroupLink>) {
        let _ = self.inner.group_link.set(l);
    }

    /// Whether a named group's members on several nodes share one stream (the cluster
    /// engine with a bus): an adapter that reads ahead for its clients then joins only
    /// while it has clients, or it would hold messages other nodes' clients could take.
    pub fn groups_span_nodes(&self) -> bool {
        self.inner.group_link.get().is_some()
    }

    /// An ephemeral event another node published, offered to this node's subscribers
    /// (and not relayed again).
    pub fn deliver_relayed(&self, event: EventRef) {
        self.inner.bus.deliver(&event);
    }

    /// Where the event log stands.
    pub fn log_state(&self) -> LogState {
        self.inner.store.log_state()
    }

    /// Whether the event log is the deployment's, shared by every node (the Postgres
    /// store), rather than this node's own.
    pub fn log_is_shared(&self) -> bool {
        self.inner.store.engine() == "cluster"
    }

    /// Up to `limit` logged events after sequence `after`, every topic's (`$`-topics
    /// included), in order: for what carries the whole log elsewhere (the cluster's
    /// JetStream relay). The server's own callers only: no policy applies.
    pub async fn read_log(&self, after: u64, limit: usize) -> HubResult<Vec<EventRef>> {
        self.inner.store.read_events(after, limit).await
    }

    /// The lease on `name` when no other node holds it (work one node does at a time;
    /// see [`crate::cluster::Lease`]).
    pub async fn try_lease(&self, name: &str) -> HubResult<Option<Box<dyn crate::cluster::Lease>>> {
        self.inner.store.try_lease(name).await
    }

    /// How many events a subscriber may fall behind before the Hub steps in (replaying
    /// durable ones from the log, dropping ephemeral ones).
    pub fn subscriber_queue(&self) -> usize {
        self.inner.config.subscriber_queue
    }

    /// How full the store's write queue is (0 to 1): AMQP's `connection.blocked` and
    /// friends look at it.
    pub fn write_pressure(&self) -> f32 {
        self.inner.store.write_pressure()
    }

    /// Number of live bus subscribers (for metrics and tests).
    pub fn subscriber_count(&self) -> usize {
        self.inner.bus.subscriber_count()
    }

    /// Subscribes. Returns only once live events will flow (field note 3); replay of the
    /// requested history happens as the subscription is read.
    pub async fn subscribe(
        &self,
        ctx: &AuthContext,
        req: SubscribeRequest,
    ) -> HubResult<Subscription> {
        let filters = req.all_filters();
        if filters.is_empty() {
            return Err(HubError::InvalidRequest(
                "subscribe needs at least one topic filter or a collection".into(),
            ));
        }
        let max = self.inner.config.max_filters_per_subscription;
        if filters.len() > max && !ctx.is_system() {
            crate::admission::limit_hit("limits.max_filters_per_subscription");
            return Err(HubError::LimitReached(format!(
                "{} topic filters in one subscription; at most {max} ([limits] max_filters_per_subscription): use a wildcard or several subscriptions",
                filters.len()
            )));
        }
        for f in &filters {
            self.authorize(ctx, Action::Subscribe(f.as_str()))?;
        }
        if let Some(r) = &req.records {
            self.authorize(ctx, Action::Read(&r.collection))?;
            if let Some(id) = &r.id {
                validate_id(id)?;
            }
            // Admin-only viewing refuses the subscription outright; a view rule is
            // applied to every change by the guard below.
            self.rule(ctx, &r.collection, crate::rules::RuleKind::View, None)?;
        }
        let guard = self.guard(ctx);
        let state = self.inner.store.log_state();
        if req.group.is_none() && req.ack.is_none() {
            let direct = self.direct(&req, filters, req.since, guard)?;
            return Ok(Subscription {
                inner: Inner::Direct(Box::new(direct)),
                epoch: state.epoch,
                start_position: req.since.unwrap_or(state.last_seq),
            });
        }
        let owner = match req.adapter_managed {
            true => None,
            false => group_owner(ctx),
        };
        let link = req
            .group
            .as_ref()
            .and_then(|_| self.inner.group_link.get().cloned());
        let mut member = match link {
            Some(link) => {
                let join = crate::group_join::GroupJoin::new(&req, owner.as_deref());
                self.join_across(link, join).await?
            }
            None => self.join_here(&req, owner, None).await?.ok_or_else(|| {
                HubError::Storage("a group without a lease was not joined".into())
            })?,
        };
        // In place only where the key is the name alone (other groups' keys name their
        // filters).
        if req.group.is_some() && req.position_by_name {
            member.refilter = Some(Box::new(crate::group::Refilter {
                hub: self.clone(),
                ctx: ctx.clone(),
                req: req.clone(),
                guard: guard.clone(),
                ctl: member.ctl.clone(),
            }));
        }
        member.guard = guard;
        Ok(Subscription {
            inner: Inner::Member(member),
            epoch: state.epoch,
            start_position: req.since.unwrap_or(state.last_seq),
        })
    }

    /// Makes the named group of `req` (positioned by name) read with `req`'s filters, if
    /// its dispatcher runs on this node; `false` if it does not. Every node applying a
    /// change of an AMQP queue's bindings calls it, so the node running the group
    /// refilters it even when none of the queue's consumers are there.
    pub async fn refilter_hosted(
        &self,
        ctx: &AuthContext,
        req: &SubscribeRequest,
    ) -> HubResult<bool> {
        let Some(name) = &req.group else {
            return Ok(false);
        };
        if !req.position_by_name {
            return Ok(false);
        }
        let (key, _) = group_keys(name, &req.all_filters(), req, req.ack.is_some());
        let Some(ctl) = self.inner.groups.running(&key) else {
            return Ok(false);
        };
        let (c, done) =
            crate::group::refilter_ctl(self, ctx, req, self.guard(ctx), req.filters.clone())?;
        if ctl.send(c).is_err() {
            return Ok(false);
        }
        match done.await {
            Ok(r) => r.map(|()| true),
            Err(_) => Ok(false),
        }
    }

    /// Joins a group on this node (starting its dispatcher here unless it runs already).
    /// With a `link` (the cluster engine) the dispatcher starts only with the group's
    /// lease: `Ok(None)` when another node holds it.
    pub(crate) async fn join_here(
        &self,
        req: &SubscribeRequest,
        owner: Option<Arc<str>>,
        link: Option<Arc<dyn crate::cluster::GroupLink>>,
    ) -> HubResult<Option<crate::group::Member>> {
        let filters = req.all_filters();
        let state = self.inner.store.log_state();
        let ack_timeout = req.ack.map(|a| a.ack_timeout);
        let prefetch = req
            .ack
            .map(|a| a.prefetch.clamp(1, self.inner.config.max_prefetch));
        let (key, legacy_key, persist) = match &req.group {
            Some(name) => {
                let (key, legacy) = group_keys(name, &filters, req, ack_timeout.is_some());
                (key, legacy, true)
            }
            None => (format!("\0anon\n{}", crate::record::new_id()), None, false),
        };
        let claim = link.map(|link| crate::group_join::claim(self.inner.store.clone(), link, &key));
        let spawn = GroupSpawn {
            key,
            legacy_key,
            filters: crate::group::filters_text(&filters),
            cap: state.last_seq,
            persist,
            owner,
            max_owned: self.inner.config.max_groups_per_identity,
            ack_timeout,
            store: self.inner.store.clone(),
            // A child token per subscription: waiting registers on its own node, not on
            // the one every subscription would share (a lock all of them would take).
            shutdown: self.inner.shutdown.child_token(),
            claim,
        };
        let hub = self.clone();
        let req2 = req.clone();
        self.inner
            .groups
            .join(spawn, prefetch, move |saved| {
                let (hub, req, filters) = (hub.clone(), req2.clone(), filters.clone());
                async move {
                    let since = saved.or(req.since);
                    hub.direct(&req, filters, since, None)
                }
            })
            .await
    }

    pub(crate) fn direct(
        &self,
        req: &SubscribeRequest,
        filters: Vec<TopicFilter>,
        since: Option<u64>,
        guard: Option<Arc<crate::rules_hub::Guard>>,
    ) -> HubResult<Direct> {
        self.direct_since_change(req, filters, since, guard, Vec::new())
    }

    /// [`Hub::direct`] where `earlier` filters still decide for events up to their
    /// sequences (a group whose filters changed; see [`crate::group::Refilter`]).
    pub(crate) fn direct_since_change(
        &self,
        req: &SubscribeRequest,
        filters: Vec<TopicFilter>,
        since: Option<u64>,
        guard: Option<Arc<crate::rules_hub::Guard>>,
        earlier: Vec<(u64, Vec<TopicFilter>)>,
    ) -> HubResult<Direct> {
        let mut matched = filters.clone();
        for (_, f) in &earlier {
            for f in f {
                if !matched.iter().any(|m| m.as_str() == f.as_str()) {
                    matched.push(f.clone());
                }
            }
        }
        let wide = matched.len() > filters.len();
        let (reg, rx) = self.inner.bus.register(
            matched,
            req.queue.unwrap_or(self.inner.config.subscriber_queue),
            req.durable_only,
        );
        // Read the log state only after registering, so nothing falls between.
        let state = self.inner.store.log_state();
        let mut notices = std::collections::VecDeque::new();
        let (last, replaying) = match since {
            None => (state.last_seq, false),
            Some(n) => {
                let epoch_differs = req.epoch.as_ref().is_some_and(|e| *e != state.epoch);
                let lost = n > state.last_seq || epoch_differs;
                if n + 1 < state.first_seq || lost {
                    if req.strict && epoch_differs {
                        return Err(HubError::EpochMismatch {
                            given: req.epoch.clone().unwrap_or_default(),
                            current: state.epoch,
                        });
                    }
                    if req.strict {
                        return Err(HubError::PositionUnavailable {
                            requested: n,
                            first_available: state.first_seq,
                            last: state.last_seq,
                            epoch: state.epoch,
                        });
                    }
                    let from = if lost {
                        state.first_seq.max(1)
                    } else {
                        state.first_seq
                    };
                    notices.push_back(Notice::ResumedFrom {
                        requested: n,
                        from,
                        epoch: state.epoch.clone(),
                    });
                    (from.saturating_sub(1), true)
                } else {
                    (n, true)
                }
            }
        };
        Ok(Direct {
            store: self.inner.store.clone(),
            reg,
            rx,
            filters,
            earlier: earlier.into(),
            wide,
            records: req.records.clone(),
            guard,
            last,
            replaying,
            buffer: Default::default(),
            notices,
            // A child token per subscription: waiting registers on its own node, not on
            // the one every subscription would share (a lock all of them would take).
            shutdown: self.inner.shutdown.child_token(),
            // A group's dispatcher shares its source among members: it reports drops
            // to all of them rather than ending the group.
            overflow: if req.group.is_some() || req.ack.is_some() {
                Overflow::Notify
            } else {
                req.overflow
            },
            closed: false,
        })
    }
}

pub(crate) fn unexpected(out: WriteOutcome) -> HubError {
    HubError::Storage(format!("engine returned an unexpected outcome: {out:?}"))
}
