//! Groups: competing consumers with acknowledgements, redelivery and a prefetch window.
//!
//! A group is one dispatcher task per `(name, filters)` that owns a [`Direct`]
//! subscription (so replay, lag recovery and record filters work exactly as for a single
//! subscriber) and hands each event to one member with credit, round-robin. In ack mode
//! the dispatcher tracks in-flight durable events; an event unacknowledged after the ack
//! timeout, or held by a member that leaves, is redelivered to a member with credit.
//! Named groups persist their acknowledged position, so a group that restarts (or whose
//! last member comes back) resumes where it was acknowledged — the semantics of a
//! JetStream durable consumer. An acked subscription without a group is a group of one
//! that is not persisted.
//!
//! Members talk to the dispatcher over an unbounded control channel; it stays small
//! because only joins, leaves and acks travel on it and acks are bounded by prefetch.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::engine::{Store, WriteCommand};
use crate::error::HubResult;
use crate::event::{EventRef, Notice};
use crate::subscription::{Delivery, Direct, Item};

mod keys;
mod member;

pub(crate) use keys::{group_keys, group_owner};

pub(crate) use member::{AckHandle, Acks, Ctl, Member, member_queue};
pub use member::{LinkCtl, LinkedMember, MemberLink, linked};

/// Queue depth per member when no ack policy sets a prefetch.
const DEFAULT_MEMBER_QUEUE: usize = 256;
/// How often a changed group position is persisted.
const PERSIST_EVERY: Duration = Duration::from_millis(500);

/// The registry of running group dispatchers.
#[derive(Default)]
pub(crate) struct Groups {
    map: Mutex<HashMap<String, Running>>,
    next_member: std::sync::atomic::AtomicU64,
}

/// A running dispatcher, and the filters its source reads.
struct Running {
    ctl: mpsc::UnboundedSender<Ctl>,
    acks: Arc<Acks>,
    filters: String,
}

/// Builds a group's new source from the sequence its old one had read to.
/// Makes a group's new source from a position, with the filters that still decide for
/// events up to given sequences (see [`Refilter`]).
pub(crate) type MakeSource =
    Box<dyn FnOnce(u64, Vec<(u64, Vec<crate::topic::TopicFilter>)>) -> HubResult<Direct> + Send>;

/// The canonical text of a group's filters (what tells two groups' filters apart).
pub(crate) fn filters_text(filters: &[crate::topic::TopicFilter]) -> String {
    filters
        .iter()
        .map(|f| f.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Changes the topic filters a running group reads, without a member leaving: an AMQP
/// queue bound or unbound while its consumers hold unacknowledged messages. Rejoining
/// with the new filters instead restarted the group from its acknowledged position,
/// and everything held or acknowledged past it was delivered a second time.
#[derive(Clone)]
pub struct Refilter {
    pub(crate) hub: crate::hub::Hub,
    pub(crate) ctx: crate::auth::AuthContext,
    pub(crate) req: crate::subscription::SubscribeRequest,
    pub(crate) guard: Option<Arc<crate::rules_hub::Guard>>,
    pub(crate) ctl: mpsc::UnboundedSender<Ctl>,
}

impl Refilter {
    /// Reads with `filters` from now on: events published after this call are matched
    /// against them; those published before it are routed by the old filters even if
    /// the group has not read them yet (an AMQP message published before an unbind
    /// stays in the queue), and nothing already read is read again. Sent at once (so
    /// changes sent one after another apply in that order); what it returns resolves
    /// once the group reads with them. On the cluster engine a member linked to a group
    /// running on another node only keeps them for its next join: the node running the
    /// group applies the same change ([`crate::Hub::refilter_hosted`]).
    pub fn send(
        &self,
        filters: Vec<crate::topic::TopicFilter>,
    ) -> HubResult<tokio::sync::oneshot::Receiver<HubResult<()>>> {
        let (ctl, result) =
            refilter_ctl(&self.hub, &self.ctx, &self.req, self.guard.clone(), filters)?;
        self.ctl
            .send(ctl)
            .map_err(|_| crate::error::HubError::Storage("the group stopped".into()))?;
        Ok(result)
    }
}

/// A [`Ctl::Refilter`] for `req` with other topic filters.
pub(crate) fn refilter_ctl(
    hub: &crate::hub::Hub,
    ctx: &crate::auth::AuthContext,
    req: &crate::subscription::SubscribeRequest,
    guard: Option<Arc<crate::rules_hub::Guard>>,
    filters: Vec<crate::topic::TopicFilter>,
) -> HubResult<(Ctl, tokio::sync::oneshot::Receiver<HubResult<()>>)> {
    for f in &filters {
        hub.authorize(ctx, crate::auth::Action::Subscribe(f.as_str()))?;
    }
    let mut req = req.clone();
    req.filters = filters.clone();
    let all = req.all_filters();
    let text = filters_text(&all);
    let hub = hub.clone();
    // Where the change is made in the log: what was published up to here, on this node
    // or (on the cluster engine) relayed to it, keeps the old routing.
    let at = hub.inner.store.log_state().last_seq;
    let hub = hub.clone();
    let make: MakeSource = Box::new(move |from, earlier| {
        hub.direct_since_change(&req, all, Some(from), guard, earlier)
    });
    let (done, result) = tokio::sync::oneshot::channel();
    let ctl = Ctl::Refilter {
        topics: filters,
        filters: text,
        at,
        make,
        done,
    };
    Ok((ctl, result))
}

impl Groups {
    /// The control channel of the group `key`'s dispatcher, if it runs on this node.
    pub(crate) fn running(&self, key: &str) -> Option<mpsc::UnboundedSender<Ctl>> {
        self.map
            .lock()
            .get(key)
            .filter(|r| !r.ctl.is_closed())
            .map(|r| r.ctl.clone())
    }
}

/// How long a joiner with new filters waits for the dispatcher with the old ones to
/// retire (a group positioned by name whose filters changed).
const REFILTER_WAIT: Duration = Duration::from_secs(5);

/// How to start a dispatcher for a group not yet running.
pub(crate) struct GroupSpawn {
    pub(crate) key: String,
    /// Where an earlier release kept this group's position, if its key differed.
    pub(crate) legacy_key: Option<String>,
    /// The filters' canonical text: a group keyed by name alone that is running with
    /// other filters is let retire first, so the new filters take effect.
    pub(crate) filters: String,
    /// The log head when this join began. A dispatcher with other filters that was
    /// still running meanwhile may have saved a position past events only the new
    /// filters match; the new one starts no later than this.
    pub(crate) cap: u64,
    pub(crate) persist: bool,
    /// Who creates the group if it is new (`None`: the server, not counted), and how
    /// many saved groups that identity may have.
    pub(crate) owner: Option<Arc<str>>,
    pub(crate) max_owned: usize,
    pub(crate) ack_timeout: Option<Duration>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) shutdown: CancellationToken,
    /// On the cluster engine: takes the group's lease before a dispatcher starts here
    /// (`Ok(None)`: another node runs it). Without one this node always may.
    pub(crate) claim: Option<Claim>,
}

/// Takes a group's lease for this node (and starts answering other nodes' joins).
pub(crate) type Claim =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, HubResult<Option<Hosting>>> + Send + Sync>;

/// What lets this node run a group's dispatcher on the cluster engine: its lease, and
/// whatever answers other nodes' joins while it lives.
pub(crate) struct Hosting {
    pub(crate) lease: Box<dyn crate::cluster::Lease>,
    pub(crate) _host: Box<dyn std::any::Any + Send + Sync>,
}

impl Groups {
    /// Waits (until `deadline`) while the group runs with other filters: a group keyed
    /// by name alone whose filters changed lets the old dispatcher retire first.
    async fn wait_for_other_filters(&self, spawn: &GroupSpawn, deadline: Instant) -> HubResult<()> {
        loop {
            let busy = self
                .map
                .lock()
                .get(&spawn.key)
                .is_some_and(|r| r.filters != spawn.filters && !r.ctl.is_closed());
            if !busy {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(crate::error::HubError::InvalidRequest(
                    "this group is in use with other topic filters".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Joins the group, starting its dispatcher (with `make_source`) if it is not running.
    /// `Ok(None)` when it is not running here and the spawn's claim says another node
    /// runs it.
    pub(crate) async fn join<F, Fut>(
        self: &Arc<Self>,
        spawn: GroupSpawn,
        prefetch: Option<usize>,
        make_source: F,
    ) -> HubResult<Option<Member>>
    where
        F: Fn(Option<u64>) -> Fut,
        Fut: std::future::Future<Output = HubResult<Direct>>,
    {
        let id = self
            .next_member
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let deadline = Instant::now() + REFILTER_WAIT;
        let queue = prefetch.unwrap_or(DEFAULT_MEMBER_QUEUE);
        let (tx, rx) = mpsc::channel(queue.max(1));
        let mut join = Ctl::Join {
            id,
            tx,
            prefetch: queue,
        };
        let (source, saved, ctl_tx, ctl_rx, acks, hosting) = loop {
            self.wait_for_other_filters(&spawn, deadline).await?;
            // Sending under the registry lock orders this join against a retiring dispatcher.
            join = {
                let map = self.map.lock();
                match map.get(&spawn.key) {
                    Some(r) if r.filters == spawn.filters => match r.ctl.send(join) {
                        Ok(()) => {
                            return Ok(Some(Member {
                                guard: None,
                                refilter: None,
                                id,
                                rx,
                                ctl: r.ctl.clone(),
                                acks: Some(r.acks.clone()),
                                shutdown: spawn.shutdown,
                            }));
                        }
                        // The dispatcher exited: start a new one.
                        Err(mpsc::error::SendError(j)) => j,
                    },
                    _ => join,
                }
            };
            // The lease before the saved position: the node that ran the group last
            // saved it before letting the lease go.
            let hosting = match &spawn.claim {
                None => None,
                Some(claim) => match claim().await? {
                    Some(h) => Some(h),
                    None => return Ok(None),
                },
            };
            let saved = match (spawn.persist, &spawn.legacy_key) {
                (false, _) => None,
                (true, legacy) => match spawn.store.load_consumer(&spawn.key).await? {
                    Some(p) => Some(p),
                    // Saved under the new key from the first acknowledgement on.
                    None => match legacy {
                        Some(l) => spawn.store.load_consumer(l).await?,
                        None => None,
                    },
                },
            };
            let saved = saved.map(|p| p.min(spawn.cap));
            if spawn.persist
                && saved.is_none()
                && let Some(owner) = &spawn.owner
            {
                let owned = spawn.store.count_consumers_owned(owner).await?;
                if owned >= spawn.max_owned {
                    crate::admission::limit_hit("limits.max_groups_per_identity");
                    return Err(crate::error::HubError::LimitReached(format!(
                        "'{owner}' keeps {owned} named groups, the most one identity may ([limits] max_groups_per_identity); delete one or reuse a name"
                    )));
                }
            }
            let source = make_source(saved).await?;
            let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
            let acks = Arc::new(Acks::default());
            // Racing joiners may both have reached here; the first to insert wins and the
            // other joins the winner (with the same filters), dropping its unneeded source.
            let mut map = self.map.lock();
            if let Some(r) = map.get(&spawn.key)
                && !r.ctl.is_closed()
            {
                if r.filters == spawn.filters {
                    let ctl = r.ctl.clone();
                    let _ = ctl.send(join);
                    return Ok(Some(Member {
                        guard: None,
                        refilter: None,
                        id,
                        rx,
                        ctl,
                        acks: Some(r.acks.clone()),
                        shutdown: spawn.shutdown,
                    }));
                }
                // A joiner with other filters won the race: this member must not join
                // it (it would read the wrong topics); wait for it to retire, then retry.
                drop(map);
                drop(source);
                drop(hosting);
                continue;
            }
            map.insert(
                spawn.key.clone(),
                Running {
                    ctl: ctl_tx.clone(),
                    acks: acks.clone(),
                    filters: spawn.filters.clone(),
                },
            );
            break (source, saved, ctl_tx, ctl_rx, acks, hosting);
        };
        // A new group's start is saved before its first member is answered (an MQTT
        // SUBACK, a queue's consume-ok): were this node to die before its first periodic
        // save, the group would start live wherever it runs next and skip what was
        // published in between.
        let saved = match saved {
            None if spawn.persist => {
                let cmd = WriteCommand::SaveConsumer {
                    key: spawn.key.clone(),
                    position: source.last,
                    owner: spawn.owner.clone(),
                };
                spawn.store.write(cmd).await?;
                Some(source.last)
            }
            saved => saved,
        };
        let _ = ctl_tx.send(join);
        // A new group is saved at once, so it counts against its owner from the start.
        let owner = match saved {
            None => spawn.owner,
            Some(_) => None,
        };
        let dispatcher = Dispatcher {
            groups: self.clone(),
            key: spawn.key,
            persist: spawn.persist,
            owner,
            ack_timeout: spawn.ack_timeout,
            store: spawn.store,
            source,
            ctl: ctl_rx,
            acks: acks.clone(),
            members: Vec::new(),
            rr: 0,
            inflight: BTreeMap::new(),
            deadlines: VecDeque::new(),
            redeliver: VecDeque::new(),
            saved_position: saved,
            retired: false,
            hosting,
        };
        tokio::spawn(dispatcher.run(spawn.shutdown.clone()));
        Ok(Some(Member {
            guard: None,
            refilter: None,
            id,
            rx,
            ctl: ctl_tx,
            acks: Some(acks),
            shutdown: spawn.shutdown,
        }))
    }
}

struct MemberState {
    id: u64,
    tx: mpsc::Sender<HubResult<Item>>,
    prefetch: usize,
    inflight: usize,
}

/// Rebuilds `deadlines` from what is in flight once stale entries outnumber live ones:
/// they only leave from the front, so a message held unacknowledged at the front
/// would otherwise let the queue grow with every later delivery.
fn compact_deadlines<I: Iterator<Item = (Instant, u64)>>(
    deadlines: &mut VecDeque<(Instant, u64)>,
    live: usize,
    inflight: impl FnOnce() -> I,
) {
    if deadlines.len() <= 2 * live + 64 {
        return;
    }
    let mut fresh: Vec<(Instant, u64)> = inflight().collect();
    fresh.sort_unstable();
    *deadlines = fresh.into();
}

struct InFlight {
    event: EventRef,
    member: u64,
    deadline: Instant,
    redeliveries: u32,
}

struct Dispatcher {
    groups: Arc<Groups>,
    key: String,
    persist: bool,
    /// The creator of a group that had no saved position, written with its first save.
    owner: Option<Arc<str>>,
    ack_timeout: Option<Duration>,
    store: Arc<dyn Store>,
    source: Direct,
    ctl: mpsc::UnboundedReceiver<Ctl>,
    acks: Arc<Acks>,
    members: Vec<MemberState>,
    rr: usize,
    inflight: BTreeMap<u64, InFlight>,
    /// `inflight`'s deadlines in the order given, so the earliest is at the front (the
    /// ack timeout is the same for all): entries acknowledged or given again since are
    /// skipped when they reach the front. Finding the next deadline by scanning
    /// `inflight` cost every turn of the loop in proportion to the window.
    deadlines: VecDeque<(Instant, u64)>,
    redeliver: VecDeque<(EventRef, u32)>,
    saved_position: Option<u64>,
    /// Set once this dispatcher has removed itself from the registry.
    retired: bool,
    /// On the cluster engine, the lease that makes this node the group's one
    /// dispatcher; once lost, another node's takes over and this one stops.
    hosting: Option<Hosting>,
}

impl Dispatcher {
    fn has_credit(&self) -> bool {
        self.members.iter().any(|m| self.credit(m))
    }

    fn credit(&self, m: &MemberState) -> bool {
        if self.ack_timeout.is_some() {
            m.inflight < m.prefetch
        } else {
            m.tx.capacity() > 0
        }
    }

    /// Everything at or below this sequence is acknowledged (or needs none).
    ///
    /// The source's `last` runs ahead of what was handed out while it replays (a whole
    /// page is read into its buffer at once), so events still buffered there are pending.
    fn position(&self) -> u64 {
        let pending = self
            .inflight
            .keys()
            .next()
            .copied()
            .into_iter()
            .chain(self.redeliver.iter().filter_map(|(e, _)| e.seq))
            .chain(self.source.buffer.iter().find_map(|e| e.seq))
            .min();
        match pending {
            Some(s) => s.saturating_sub(1),
            None => self.source.last,
        }
    }

    /// Whether another node may have taken this group over.
    fn lease_lost(&self) -> bool {
        self.hosting.as_ref().is_some_and(|h| !h.lease.held())
    }

    async fn persist(&mut self) {
        // A position saved without the lease could undo the new dispatcher's.
        if !self.persist || self.lease_lost() {
            return;
        }
        self.take_acks();
        let pos = self.position();
        if self.saved_position == Some(pos) {
            return;
        }
        let cmd = WriteCommand::SaveConsumer {
            key: self.key.clone(),
            position: pos,
            owner: self.owner.clone(),
        };
        match self.store.write(cmd).await {
            Ok(_) => self.saved_position = Some(pos),
            Err(e) => tracing::warn!(group = %self.key, error = %e, "saving group position failed"),
        }
    }

    /// Hands one item to the next member with credit. Returns false if none took it.
    fn dispatch(&mut self, event: EventRef, redeliveries: u32) -> bool {
        let n = self.members.len();
        for i in 0..n {
            let idx = (self.rr + i) % n;
            if !self.credit(&self.members[idx]) {
                continue;
            }
            let m = &mut self.members[idx];
            let item = Ok(Item::Event(Delivery {
                event: event.clone(),
                redeliveries,
            }));
            if m.tx.try_send(item).is_err() {
                continue;
            }
            self.rr = idx + 1;
            if let (Some(t), Some(seq)) = (self.ack_timeout, event.seq) {
                m.inflight += 1;
                let deadline = Instant::now() + t;
                self.inflight.insert(
                    seq,
                    InFlight {
                        event,
                        member: m.id,
                        deadline,
                        redeliveries,
                    },
                );
                self.deadlines.push_back((deadline, seq));
                compact_deadlines(&mut self.deadlines, self.inflight.len(), || {
                    self.inflight.iter().map(|(s, f)| (f.deadline, *s))
                });
            }
            return true;
        }
        false
    }

    fn requeue_member(&mut self, member: u64) {
        // What it acknowledged before leaving is not given again.
        self.take_acks();
        let seqs: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, f)| f.member == member)
            .map(|(s, _)| *s)
            .collect();
        for s in seqs {
            if let Some(f) = self.inflight.remove(&s) {
                self.redeliver.push_back((f.event, f.redeliveries + 1));
            }
        }
    }

    fn on_ack(&mut self, seq: u64) {
        if let Some(f) = self.inflight.remove(&seq)
            && let Some(m) = self.members.iter_mut().find(|m| m.id == f.member)
        {
            m.inflight = m.inflight.saturating_sub(1);
        }
    }

    /// Settles what members acknowledged since the last look; `true` if anything.
    fn take_acks(&mut self) -> bool {
        let seqs = self.acks.take();
        for &seq in &seqs {
            self.on_ack(seq);
        }
        !seqs.is_empty()
    }

    /// The earliest deadline of what is in flight.
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&(d, seq)) = self.deadlines.front() {
            if self.inflight.get(&seq).is_some_and(|f| f.deadline == d) {
                return Some(d);
            }
            self.deadlines.pop_front();
        }
        None
    }

    fn expire(&mut self) {
        self.take_acks();
        let now = Instant::now();
        let expired: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        for s in expired {
            if let Some(f) = self.inflight.remove(&s) {
                if let Some(m) = self.members.iter_mut().find(|m| m.id == f.member) {
                    m.inflight = m.inflight.saturating_sub(1);
                }
                metrics::counter!("polyport_redeliveries_total").increment(1);
                self.redeliver.push_back((f.event, f.redeliveries + 1));
            }
        }
    }

    /// Gives a notice to every member (they all share the stream's fate).
    fn broadcast_notice(&mut self, n: Notice) {
        for m in &self.members {
            let _ = m.tx.try_send(Ok(Item::Notice(n.clone())));
        }
    }

    async fn run(mut self, shutdown: CancellationToken) {
        if self.owner.is_some() {
            self.persist().await;
        }
        let mut tick = tokio::time::interval(PERSIST_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One timer for the whole run, moved only to an earlier deadline: when the
        // earliest is acknowledged it fires early, finds nothing due and is set again.
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        loop {
            self.take_acks();
            // Redeliveries first, as far as credit allows.
            while let Some((ev, n)) = self.redeliver.pop_front() {
                if !self.dispatch(ev.clone(), n) {
                    self.redeliver.push_front((ev, n));
                    break;
                }
            }
            let can_pull = self.redeliver.is_empty() && self.has_credit();
            // Waiting for room: acks must wake us. Set before a last look, so an ack
            // pushed in between either is seen now or wakes us.
            let blocked = !can_pull && !self.members.is_empty();
            self.acks
                .wanted
                .store(blocked, std::sync::atomic::Ordering::SeqCst);
            if blocked && self.take_acks() {
                continue;
            }
            if let Some(next) = self.next_deadline()
                && armed.is_none_or(|a| next < a)
            {
                timer.as_mut().reset(next);
                armed = Some(next);
            }
            tokio::select! {
                ctl = self.ctl.recv() => match ctl {
                    Some(Ctl::Join { id, tx, prefetch }) => {
                        self.members.push(MemberState { id, tx, prefetch, inflight: 0 });
                    }
                    Some(Ctl::Leave { id }) => {
                        self.members.retain(|m| m.id != id);
                        self.requeue_member(id);
                        if self.members.is_empty() {
                            // Save the position while still registered, so a member that
                            // starts a fresh dispatcher right after we retire loads it.
                            self.persist().await;
                            if self.try_retire() {
                                break;
                            }
                        }
                    }
                    Some(Ctl::Ack { seq }) => self.on_ack(seq),
                    Some(Ctl::Refilter { filters, at, make, done, .. }) => {
                        let _ = done.send(self.refilter(filters, at, make));
                    }
                    None => break,
                },
                _ = self.acks.wake.notified(), if blocked => {}
                item = self.source.next(), if can_pull => match item {
                    Some(Ok(Item::Event(d))) => {
                        if !self.dispatch(d.event.clone(), 0) {
                            self.redeliver.push_back((d.event, 0));
                        }
                    }
                    Some(Ok(Item::Notice(n))) => self.broadcast_notice(n),
                    Some(Err(e)) => {
                        tracing::warn!(group = %self.key, error = %e, "group source failed");
                        for m in &self.members {
                            let _ = m.tx.try_send(Err(crate::error::HubError::Storage(e.to_string())));
                        }
                        break;
                    }
                    None => break,
                },
                _ = &mut timer, if armed.is_some() => {
                    armed = None;
                    self.expire();
                }
                _ = tick.tick() => {
                    if self.lease_lost() {
                        tracing::info!(group = %self.key, "group lease lost: another node dispatches it now");
                        break;
                    }
                    self.persist().await
                }
                _ = shutdown.cancelled() => break,
            }
        }
        if !self.retired {
            // Nobody else can have registered this key while we were registered.
            self.groups.map.lock().remove(&self.key);
        }
        self.persist().await;
    }

    /// Swaps the source for one with other filters, from where this one has read to
    /// (events it read ahead into its buffer are read again). Events up to `at`, where
    /// the change was made, are still matched against the old filters.
    fn refilter(&mut self, filters: String, at: u64, make: MakeSource) -> HubResult<()> {
        let same = self
            .groups
            .map
            .lock()
            .get(&self.key)
            .is_some_and(|r| r.filters == filters);
        if same {
            return Ok(());
        }
        let from = match self.source.buffer.iter().find_map(|e| e.seq) {
            Some(s) => s.saturating_sub(1),
            None => self.source.last,
        };
        let mut earlier: Vec<_> = self
            .source
            .earlier
            .iter()
            .filter(|(until, _)| *until > from)
            .cloned()
            .collect();
        if at > from && earlier.last().is_none_or(|(until, _)| *until < at) {
            earlier.push((at, self.source.filters.clone()));
        }
        self.source = make(from, earlier)?;
        if let Some(r) = self.groups.map.lock().get_mut(&self.key) {
            r.filters = filters;
        }
        Ok(())
    }

    /// With no members left, removes the group from the registry unless a join is
    /// already queued (the registry lock orders this against joiners).
    fn try_retire(&mut self) -> bool {
        let mut map = self.groups.map.lock();
        if !self.ctl.is_empty() {
            return false;
        }
        map.remove(&self.key);
        self.retired = true;
        true
    }
}

#[cfg(test)]
mod deadline_tests {
    use super::compact_deadlines;
    use std::collections::VecDeque;
    use tokio::time::{Duration, Instant};

    #[test]
    fn a_message_held_at_the_front_does_not_let_the_deadlines_grow() {
        let t0 = Instant::now();
        let at = |i: u64| t0 + Duration::from_millis(i);
        // Seq 0 stays in flight; every later one is acknowledged right after delivery.
        let mut deadlines = VecDeque::new();
        for seq in 0..10_000u64 {
            deadlines.push_back((at(seq), seq));
            let live = if seq == 0 { 1 } else { 2 };
            compact_deadlines(&mut deadlines, live, || {
                [(at(0), 0), (at(seq), seq)].into_iter().take(live)
            });
            assert!(
                deadlines.len() <= 2 * 2 + 64 + 1,
                "{} entries",
                deadlines.len()
            );
        }
        assert_eq!(
            deadlines.front(),
            Some(&(at(0), 0)),
            "the earliest stays first"
        );
    }
}
