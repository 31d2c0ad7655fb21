//! The single writer thread and its group commit.
//!
//! All writes funnel into one writer that owns the only read-write connection, run by an
//! OS thread of its own. It drains whatever is queued (up to `max_batch`), applies each
//! command inside its own savepoint (so one bad write cannot fail its neighbours),
//! commits once — one fsync for the whole batch — and only then publishes the batch's
//! events, in sequence order, and answers the callers. Sequences are assigned here, so
//! they are gap-free: a failed command gives its number back, a failed commit gives the
//! whole batch's back.
//!
//! On SQLite a transient publish ([`Durability::Logged`]: no fsync) that finds the
//! writer idle, with nothing queued ahead of it, is committed by its submitter under the
//! writer's lock instead ([`Handle::submit`]): the same code, order and gap-free
//! sequences, minus the two thread wake-ups that were most of such a message's latency.
//!
//! The batch is whatever queued while the last commit ran: no timer, no target size.
//! Two refinements were built and measured against this (2026-12-07, `polyport bench
//! http --connections 64` and `bench amqp --only persistent`, whose rows print the
//! store's commits and writes per commit) and dropped. Waiting for company before a
//! small batch's commit made AMQP's batches fuller (about 4 writes to 6–19) and its CPU
//! per message up to 17% lower, but not its throughput, and REST POSTs 17% slower: in
//! a closed loop every client is already waiting. Syncing the WAL on a second thread
//! while this one commits the next batch (`synchronous=NORMAL` plus `fdatasync`) was
//! slower on both (REST ~12%, AMQP ~3%): an fsync here costs 0.2–0.5 ms, less than the
//! extra hand-off between threads.
//!
//! A third was built, measured and taken out again (commits 3bbbd1e and eeff375): AMQP
//! marked a publish "streaming" when its client was 8+ publishes ahead of its confirms,
//! and a batch holding one stayed open while the stream kept coming (150 µs gaps, 1 ms
//! at most, the thread asleep; a write whose caller waits unparked it). Held on every
//! streamed publish, it made the 1-publisher persistent row (`bench amqp --only
//! 'persistent →' --rounds 3`) 0.88–0.92× RabbitMQ at 0.77–0.80× its CPU (eager:
//! 0.77–0.83× at ~1.0×), but with `--window 16` it fell from 1.04–1.14× to 0.94–0.99×:
//! the client waited out each gap with its window full. Held only away from the end of
//! the client's window, the window-16 shape kept its 1.12× but the 256 row's gain went
//! into the noise (4.0 writes per commit instead of 3.4; 0.79–0.85× vs 0.77–0.88× over
//! four interleaved pairs). A rule that wins at both windows is still to be found.
//!
//! A fourth was tried on 2026-12-08 on a disk whose syncs took 0.35–2.4 ms from one
//! minute to the next, and not committed: a durable batch smaller than the largest of the
//! last eight waited for company (a quarter of the last sync at most, only once syncs took
//! 0.6 ms or more). At 128 connections and 1.2 ms syncs its batches grew from 43.6 to 51.6
//! writes but commits per second fell as much (23.6k vs 24.2k POSTs/s): the two cores,
//! shared with the load generator, were the limit there, and the disk's own swings (a
//! second pair at 64 connections: 9.7k vs 15.9k/s, at 1.19 vs 0.58 ms per sync) drowned
//! the rest.
//!
//! This file holds the thread, the group commit and the dispatch over commands; each
//! noun's commands are applied in its own file (`collections`, `records`, `events`,
//! `consumers`), webhook commands in the store's outbox (`crate::webhooks`).

mod collections;
mod consumers;
mod events;
mod records;
mod retention;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::tx::{Db, Tx};
use arc_swap::ArcSwap;
use chrono::{DateTime, SubsecRound, Utc};
use parking_lot::Mutex;
use polyport_core::engine::{
    CollectionMap, EventSink, LogState, Submitted, WriteCommand, WriteOutcome,
};
use polyport_core::event::{Durability, EventRef};
use polyport_core::webhook::{Attempt, AttemptOutcome, Endpoint};
use polyport_core::{HubError, HubResult};
use tokio::sync::{mpsc, oneshot};

pub use retention::Retention;

use crate::dispatch::Dispatch;
use crate::webhooks;

/// Work for the writer thread.
pub(crate) enum Job {
    /// Boxed: a command (an event draft with its attributes) is much larger than the rest.
    Write(Box<WriteCommand>, oneshot::Sender<HubResult<WriteOutcome>>),
    /// Apply retention.
    Maintain,
    /// Checkpoint and stop.
    Close(oneshot::Sender<()>),
}

/// State the writer publishes for readers on the async side.
pub(crate) struct Shared {
    pub(crate) collections: ArcSwap<CollectionMap>,
    pub(crate) endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    /// The schema version `collections` and `endpoints` are at, where the engine counts
    /// them (several writers, each publishing what it saw).
    pub(crate) schema_version: Mutex<u64>,
    pub(crate) log: Mutex<LogState>,
    /// Hot records, updated here in commit order.
    pub(crate) records: crate::cache::RecordCache,
}

impl Shared {
    pub(crate) fn new(
        collections: CollectionMap,
        endpoints: Vec<Arc<Endpoint>>,
        log: LogState,
        records: crate::cache::RecordCache,
    ) -> Self {
        Self {
            collections: ArcSwap::from_pointee(collections),
            endpoints: ArcSwap::from_pointee(endpoints),
            schema_version: Mutex::new(0),
            log: Mutex::new(log),
            records,
        }
    }

    /// Publishes collections and endpoints, unless `version` is older than what is
    /// published (another thread saw a later schema first).
    pub(crate) fn set_schema(
        &self,
        version: Option<u64>,
        collections: Option<&CollectionMap>,
        endpoints: Option<&Vec<Arc<Endpoint>>>,
    ) {
        let mut current = self.schema_version.lock();
        if let Some(v) = version {
            if v < *current {
                return;
            }
            *current = v;
        }
        if let Some(c) = collections {
            self.collections.store(Arc::new(c.clone()));
        }
        if let Some(e) = endpoints {
            self.endpoints.store(Arc::new(e.clone()));
        }
    }
}

#[derive(Clone)]
struct State {
    next_seq: u64,
    collections: CollectionMap,
    endpoints: Vec<Arc<Endpoint>>,
}

pub(crate) struct Writer<D> {
    pub(crate) db: D,
    pub(crate) shared: Arc<Shared>,
    /// Where committed events go in order, or `None` when the engine's log follower
    /// hands this node every node's events instead (the cluster engine).
    pub(crate) sink: Option<Arc<Dispatch>>,
    pub(crate) retention: Retention,
    pub(crate) max_batch: usize,
    state: State,
    /// The database is closed: nothing more is committed.
    closed: bool,
}

type Reply = oneshot::Sender<HubResult<WriteOutcome>>;

impl<D: Db> Writer<D> {
    pub(crate) fn new(
        db: D,
        shared: Arc<Shared>,
        sink: Option<Arc<Dispatch>>,
        retention: Retention,
        max_batch: usize,
    ) -> Self {
        let (next_seq, collections, endpoints) = {
            let log = shared.log.lock();
            (
                log.last_seq + 1,
                (**shared.collections.load()).clone(),
                (**shared.endpoints.load()).clone(),
            )
        };
        Self {
            db,
            shared,
            sink,
            retention,
            max_batch,
            closed: false,
            state: State {
                next_seq,
                collections,
                endpoints,
            },
        }
    }

    /// Commits `jobs` as one transaction. `inline`: on a submitter's task (which the
    /// caller checked may hand the events to the dispatch task without waiting).
    fn commit_batch(&mut self, jobs: Vec<(WriteCommand, Reply)>, inline: bool) {
        let started = Instant::now();
        let size = jobs.len();
        // Commits of this batch wait for the disk unless every write in it is a publish
        // its sender marked transient ([`Durability::Logged`]).
        let sync = jobs.iter().any(|(cmd, _)| {
            !matches!(cmd, WriteCommand::Publish { draft, .. } if draft.durability == Durability::Logged)
        });
        let (mut tx, head) = match self.db.begin(sync) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot begin write transaction");
                fail_all(jobs.into_iter().map(|(_, reply)| reply), &e);
                return;
            }
        };
        if let Some(head) = head {
            self.state.next_seq = head.last_seq + 1;
            if let Some(schema) = head.schema {
                self.state.collections = schema.collections;
                self.state.endpoints = schema.endpoints;
                self.shared.set_schema(
                    Some(schema.version),
                    Some(&self.state.collections),
                    Some(&self.state.endpoints),
                );
            }
        }
        let start = self.state.clone();
        let mut results: Vec<(Reply, HubResult<WriteOutcome>)> = Vec::with_capacity(size);
        let mut events: Vec<EventRef> = Vec::new();
        let mut collections_changed = false;
        let mut records_reshaped = false;
        for (cmd, reply) in jobs {
            let reshapes = matches!(
                cmd,
                WriteCommand::ReplaceCollection(_) | WriteCommand::DeleteCollection(_)
            );
            let (result, is_collection_op) = apply_one(&mut tx, &mut self.state, cmd);
            records_reshaped |= reshapes && result.is_ok();
            if let Ok(out) = &result {
                if let Some(e) = outcome_event(out) {
                    events.push(e.clone());
                }
                collections_changed |= is_collection_op;
            }
            results.push((reply, result));
        }
        let last_seq = self.state.next_seq - 1;
        let endpoints_changed = !same_endpoints(&start.endpoints, &self.state.endpoints);
        let collections_changed =
            collections_changed && !same_collections(&start.collections, &self.state.collections);
        let schema_version = match D::commit(tx, last_seq, collections_changed || endpoints_changed)
        {
            Ok(v) => v,
            Err(msg) => {
                tracing::error!(error = %msg, "commit failed; batch rolled back");
                self.state = start;
                fail_all(results.into_iter().map(|(reply, _)| reply), &msg);
                return;
            }
        };
        metrics::histogram!("polyport_store_batch_size").record(size as f64);
        metrics::histogram!("polyport_store_commit_seconds")
            .record(started.elapsed().as_secs_f64());
        // Before any acknowledgement: a read after an acknowledged write sees it.
        if records_reshaped {
            self.shared.records.clear();
        }
        for (_, result) in &results {
            match result {
                Ok(WriteOutcome::Record { record, .. }) => self.shared.records.written(record),
                Ok(WriteOutcome::Deleted { record, .. }) => {
                    self.shared.records.deleted(&record.collection, &record.id);
                }
                _ => {}
            }
        }
        self.shared.set_schema(
            schema_version,
            collections_changed.then_some(&self.state.collections),
            endpoints_changed.then_some(&self.state.endpoints),
        );
        if !events.is_empty() {
            // Before any acknowledgement, as the records: the log's position includes
            // what was acknowledged (a follower may move it further meanwhile).
            let mut log = self.shared.log.lock();
            log.last_seq = log.last_seq.max(last_seq);
            drop(log);
            if let Some(sink) = &self.sink {
                match inline {
                    true => sink.hand_over(events),
                    false => sink.committed(&events),
                }
            }
        }
        for (reply, result) in results {
            let _ = reply.send(result);
        }
    }
}

/// The writer thread: takes what is queued (up to `max_batch`) and commits it under the
/// writer's lock, which a submitter committing inline may hold for a moment.
fn run<D: Db>(
    writer: Arc<Mutex<Writer<D>>>,
    mut rx: mpsc::Receiver<Job>,
    pending: Arc<AtomicUsize>,
) {
    let max_batch = writer.lock().max_batch;
    loop {
        // Just after a commit more work is often on its way (the acknowledged
        // clients answer at once): a yield or two before parking saves the futex
        // sleep and wake-up a commit would otherwise cost its successor.
        let mut ready = rx.try_recv().ok();
        for _ in 0..2 {
            if ready.is_some() {
                break;
            }
            std::thread::yield_now();
            ready = rx.try_recv().ok();
        }
        let Some(first) = ready.or_else(|| rx.blocking_recv()) else {
            break;
        };
        let mut writes: Vec<(WriteCommand, Reply)> = Vec::new();
        let mut maintain = false;
        let mut close = None;
        let mut taken = 0;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            taken += 1;
            match job {
                Job::Write(cmd, reply) => writes.push((*cmd, reply)),
                Job::Maintain => maintain = true,
                Job::Close(done) => {
                    close = Some(done);
                    break;
                }
            }
            if writes.len() < max_batch {
                next = rx.try_recv().ok();
            }
        }
        let mut w = writer.lock();
        if !writes.is_empty() {
            w.commit_batch(writes, false);
        }
        if maintain {
            w.maintain();
        }
        if close.is_some() {
            w.db.close();
            w.closed = true;
        }
        // Under the lock: an inline commit sees these done only once they are.
        pending.fetch_sub(taken, Ordering::SeqCst);
        drop(w);
        if let Some(done) = close {
            let _ = done.send(());
            break;
        }
    }
    tracing::debug!("store writer stopped");
}

fn same_endpoints(a: &[Arc<Endpoint>], b: &[Arc<Endpoint>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| Arc::ptr_eq(a, b))
}

fn same_collections(a: &CollectionMap, b: &CollectionMap) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|(k, v)| b.get(k).is_some_and(|w| Arc::ptr_eq(v, w)))
}

/// Applies one command in its own savepoint; when it fails, the in-memory state is rolled
/// back with it. Also says whether a success may have changed the collection map.
fn apply_one(
    tx: &mut dyn Tx,
    st: &mut State,
    cmd: WriteCommand,
) -> (HubResult<WriteOutcome>, bool) {
    let seq_before = st.next_seq;
    let is_collection_op = matches!(
        cmd,
        WriteCommand::CreateCollection(_)
            | WriteCommand::ReplaceCollection(_)
            | WriteCommand::DeleteCollection(_)
            | WriteCommand::CreateRecord { .. }
            | WriteCommand::ReplaceRecord { .. }
    );
    // A record write may auto-create its collection; if the write then fails, the
    // savepoint drops the collection's row and the in-memory map must follow.
    let new_collection = match &cmd {
        WriteCommand::CreateRecord { collection, .. }
        | WriteCommand::ReplaceRecord { collection, .. }
            if !st.collections.contains_key(collection) =>
        {
            Some(collection.clone())
        }
        _ => None,
    };
    let endpoints_before = st.endpoints.clone();
    let result = savepoint(tx, |tx| apply(tx, st, cmd));
    if result.is_err() {
        st.next_seq = seq_before;
        st.endpoints = endpoints_before;
        if let Some(name) = new_collection {
            st.collections.remove(&name);
        }
    }
    (result, is_collection_op)
}

/// Answers every write of a batch that failed as a whole with `e`.
fn fail_all(replies: impl IntoIterator<Item = Reply>, e: &HubError) {
    for reply in replies {
        let again = match e {
            HubError::Unavailable(m) => HubError::Unavailable(m.clone()),
            HubError::ShuttingDown => HubError::ShuttingDown,
            other => HubError::Storage(other.to_string()),
        };
        let _ = reply.send(Err(again));
    }
}

fn outcome_event(out: &WriteOutcome) -> Option<&EventRef> {
    match out {
        WriteOutcome::Record { event, .. }
        | WriteOutcome::Deleted { event, .. }
        | WriteOutcome::Published(event) => Some(event),
        _ => None,
    }
}

/// Runs `f` in a savepoint: released on success, rolled back on error.
fn savepoint<T>(tx: &mut dyn Tx, f: impl FnOnce(&mut dyn Tx) -> HubResult<T>) -> HubResult<T> {
    tx.savepoint()?;
    match f(tx) {
        Ok(v) => {
            tx.release()?;
            Ok(v)
        }
        Err(e) => {
            tx.rollback()?;
            Err(e)
        }
    }
}

/// The current time at the precision timestamps are stored with (microseconds), so the
/// record or event a write returns equals the one later read back.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn apply(tx: &mut dyn Tx, st: &mut State, cmd: WriteCommand) -> HubResult<WriteOutcome> {
    match cmd {
        WriteCommand::CreateCollection(spec) => collections::create(tx, st, spec),
        WriteCommand::ReplaceCollection(spec) => collections::replace(tx, st, spec),
        WriteCommand::DeleteCollection(name) => collections::delete(tx, st, name),
        WriteCommand::CreateRecord {
            collection,
            id,
            data,
            auto_create,
            origin,
        } => records::create(tx, st, collection, id, data, auto_create, origin),
        WriteCommand::ReplaceRecord {
            collection,
            id,
            data,
            expected_version: expected,
            auto_create,
            origin,
        } => records::replace(tx, st, collection, id, data, expected, auto_create, origin),
        WriteCommand::PatchRecord {
            collection,
            id,
            patch,
            expected_version: expected,
            origin,
        } => records::patch(tx, st, collection, id, patch, expected, origin),
        WriteCommand::DeleteRecord {
            collection,
            id,
            expected_version: expected,
            origin,
        } => records::delete(tx, st, collection, id, expected, origin),
        WriteCommand::Publish {
            draft,
            origin,
            sender,
        } => events::publish(tx, st, draft, origin, sender),
        WriteCommand::PutEndpoint(ep) => webhooks::put_endpoint(tx, &mut st.endpoints, *ep),
        WriteCommand::DeleteEndpoint(id) => webhooks::delete_endpoint(tx, &mut st.endpoints, &id),
        WriteCommand::RecordAttempt {
            endpoint_id,
            seq,
            attempt,
            outcome,
        } => record_attempt(tx, st, &endpoint_id, seq, &attempt, &outcome),
        WriteCommand::Redeliver { endpoint_id, which } => {
            webhooks::redeliver(tx, &st.endpoints, &endpoint_id, &which)
        }
        WriteCommand::PutState {
            namespace,
            key,
            value,
        } => consumers::put_state(tx, &namespace, &key, value),
        WriteCommand::DeleteConsumers { prefix } => consumers::delete(tx, &prefix),
        WriteCommand::SaveConsumer {
            key,
            position,
            owner,
        } => consumers::save(tx, &key, position, owner.as_deref()),
    }
}

/// The outbox records the attempt; an endpoint it disables is announced with an event,
/// whose sequence the writer assigns.
fn record_attempt(
    tx: &mut dyn Tx,
    st: &mut State,
    endpoint_id: &str,
    seq: u64,
    attempt: &Attempt,
    outcome: &AttemptOutcome,
) -> HubResult<WriteOutcome> {
    let draft =
        webhooks::record_attempt(tx, &mut st.endpoints, endpoint_id, seq, attempt, outcome)?;
    match draft {
        Some(d) => events::publish(tx, st, d, webhooks::ORIGIN, None),
        None => Ok(WriteOutcome::Done),
    }
}

/// The async side of a writer thread: where writes are queued, and its shutdown.
pub(crate) struct Handle {
    jobs: mpsc::Sender<Job>,
    /// Jobs queued and not yet done by the thread.
    pending: Arc<AtomicUsize>,
    /// Commits a transient publish on the submitter's task when the writer is idle.
    inline: Option<Arc<dyn Inline>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The writer, reachable from submitters for [`Handle::submit`]'s inline commits.
trait Inline: Send + Sync {
    /// Commits `cmd` now when nothing queued is ahead of it; gives it back otherwise.
    fn commit_now(&self, cmd: WriteCommand, reply: Reply) -> Option<(WriteCommand, Reply)>;
}

struct Idle<D> {
    writer: Arc<Mutex<Writer<D>>>,
    pending: Arc<AtomicUsize>,
}

impl<D: Db> Inline for Idle<D> {
    fn commit_now(&self, cmd: WriteCommand, reply: Reply) -> Option<(WriteCommand, Reply)> {
        let Some(mut w) = self.writer.try_lock() else {
            return Some((cmd, reply));
        };
        // Under the lock the thread holds while it commits and counts down: zero means
        // every job queued before this one is committed, so this one comes after it.
        let free = self.pending.load(Ordering::SeqCst) == 0
            && !w.closed
            && w.sink.as_ref().is_some_and(|s| s.has_room());
        if !free {
            return Some((cmd, reply));
        }
        w.commit_batch(vec![(cmd, reply)], true);
        None
    }
}

/// Whether a write may be committed on the submitter's task: a publish whose commit
/// does not wait for the disk (no fsync blocks the runtime's thread).
fn light(cmd: &WriteCommand) -> bool {
    matches!(cmd, WriteCommand::Publish { draft, .. } if draft.durability == Durability::Logged)
}

impl Handle {
    /// Starts `w` on a thread of its own with `queue` writes of room; `after` runs on
    /// that thread once the writer has stopped. Retention runs every second when set.
    /// Must be called inside a Tokio runtime.
    ///
    /// A writer with a local sink (SQLite: a commit is a local write, not a network
    /// round trip) also commits transient publishes inline when it is idle: a message
    /// then reaches its subscribers without waking the writer thread and back, which
    /// on an idle machine is most of a transient message's latency
    /// (`polyport bench amqp --only latency`). Under load the thread holds the writer,
    /// so publishes queue and group-commit as before.
    pub(crate) fn start<D: Db>(
        w: Writer<D>,
        queue: usize,
        after: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<Self> {
        let retention = w.retention;
        let local = w.sink.is_some();
        let (tx, rx) = mpsc::channel(queue.max(1));
        let pending = Arc::new(AtomicUsize::new(0));
        let writer = Arc::new(Mutex::new(w));
        let inline = local.then(|| {
            Arc::new(Idle {
                writer: writer.clone(),
                pending: pending.clone(),
            }) as Arc<dyn Inline>
        });
        let count = pending.clone();
        let thread = std::thread::Builder::new()
            .name("polyport-writer".into())
            .spawn(move || {
                run(writer, rx, count);
                after();
            })?;
        let handle = Self {
            jobs: tx,
            pending,
            inline,
            thread: Mutex::new(Some(thread)),
        };
        if retention.max_age.is_some() || retention.max_events.is_some() {
            let ticker = handle.jobs.clone();
            let pending = handle.pending.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    every.tick().await;
                    if enqueue(&ticker, &pending, Job::Maintain).await.is_err() {
                        break;
                    }
                }
            });
        }
        Ok(handle)
    }

    pub(crate) async fn submit(&self, cmd: WriteCommand) -> HubResult<Submitted> {
        let (tx, rx) = oneshot::channel();
        let (cmd, tx) = match &self.inline {
            Some(i) if light(&cmd) => match i.commit_now(cmd, tx) {
                Some(back) => back,
                None => {
                    return Ok(Box::pin(async move {
                        rx.await.map_err(|_| HubError::ShuttingDown)?
                    }));
                }
            },
            _ => (cmd, tx),
        };
        enqueue(&self.jobs, &self.pending, Job::Write(Box::new(cmd), tx))
            .await
            .map_err(|_| HubError::ShuttingDown)?;
        Ok(Box::pin(async move {
            rx.await.map_err(|_| HubError::ShuttingDown)?
        }))
    }

    /// How full the queue is, 0 to 1.
    pub(crate) fn pressure(&self) -> f32 {
        let max = self.jobs.max_capacity().max(1);
        1.0 - self.jobs.capacity() as f32 / max as f32
    }

    /// Lets the writer finish what is queued, then waits for its thread.
    pub(crate) async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if enqueue(&self.jobs, &self.pending, Job::Close(tx))
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
        let handle = self.thread.lock().take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// Queues a job for the thread, counted before it is sent so an inline commit cannot
/// overtake it.
async fn enqueue(jobs: &mpsc::Sender<Job>, pending: &AtomicUsize, job: Job) -> Result<(), ()> {
    pending.fetch_add(1, Ordering::SeqCst);
    jobs.send(job).await.map_err(|_| {
        pending.fetch_sub(1, Ordering::SeqCst);
    })
}
