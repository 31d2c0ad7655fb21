//! The log follower: how a node of the cluster engine learns every node's events.
//!
//! Every node's writer commits its events into the one `events` table and, in the same
//! transaction, `NOTIFY`s the schema's channel. Each node's follower `LISTEN`s there and
//! reads the events after the last one it handed on, in `seq` order, to the node's
//! sink: its own and other nodes' events alike, so subscribers see one order whichever
//! node a write came through. Sequences are handed out under the `log_head` row lock and
//! committed in that order, so reading `seq > last` never skips one still in flight.
//! A missed notification costs at most [`POLL`]; a lost connection is made again.
//!
//! The follower also publishes collections and endpoints another node changed (the
//! schema version in `log_head`), so reads on this node see them without a write here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use polyport_core::engine::EventSink;
use postgres::Client;
use postgres::fallible_iterator::FallibleIterator;

use super::row::{EVENT_COLS, event_from_row};
use crate::writer::Shared;

/// Longest wait for a notification before looking anyway.
const POLL: Duration = Duration::from_millis(500);
/// Events read per query.
const PAGE: i64 = 1000;

/// Stops the follower thread when dropped.
pub(crate) struct Follower {
    stop: Arc<AtomicBool>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Run {
    url: String,
    schema: String,
    shared: Arc<Shared>,
    sink: Arc<dyn EventSink>,
    stop: Arc<AtomicBool>,
    health: Arc<super::Health>,
    /// The last sequence handed to the sink.
    last: u64,
}

impl Follower {
    /// Stops at its next wake-up (the store is closing: its schema may go next).
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Follows the log from `last` (everything up to it is history, read from the
    /// store by whoever wants it).
    pub(crate) fn start(
        url: String,
        schema: String,
        shared: Arc<Shared>,
        sink: Arc<dyn EventSink>,
        last: u64,
        health: Arc<super::Health>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut run = Run {
            url,
            schema,
            shared,
            sink,
            stop: stop.clone(),
            health,
            last,
        };
        std::thread::Builder::new()
            .name("polyport-log-follower".into())
            .spawn(move || run.run())?;
        Ok(Self { stop })
    }
}

impl Run {
    fn run(&mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            match self.follow() {
                Ok(()) => return,
                Err(e) => {
                    let e: polyport_core::HubError = crate::StoreError::Postgres(e).into();
                    tracing::warn!(error = %e, "log follower lost Postgres; reconnecting");
                    self.health.failed(&e);
                    std::thread::sleep(POLL);
                }
            }
        }
    }

    /// Until stopped (`Ok`) or the connection fails.
    fn follow(&mut self) -> Result<(), postgres::Error> {
        let mut client = super::connect(&self.url, &self.schema)?;
        client.batch_execute(&format!(
            "LISTEN \"{}\"",
            super::schema::channel(&self.schema)
        ))?;
        while !self.stop.load(Ordering::Relaxed) {
            self.catch_up(&mut client)?;
            self.health.reached();
            // Wait for a commit anywhere; whatever else is queued is folded into this
            // wake-up (one read covers them all).
            let mut n = client.notifications();
            let woken = n.timeout_iter(POLL).next()?.is_some();
            if woken {
                while n.iter().next()?.is_some() {}
            }
        }
        Ok(())
    }

    fn catch_up(&mut self, client: &mut Client) -> Result<(), postgres::Error> {
        self.follow_schema(client)?;
        loop {
            let rows = client.query(
                &format!("SELECT {EVENT_COLS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"),
                &[&(self.last as i64), &PAGE],
            )?;
            let Some(last) = rows.last() else {
                return Ok(());
            };
            let last = last.try_get::<_, i64>(0)? as u64;
            let mut events = Vec::with_capacity(rows.len());
            for r in &rows {
                events.extend(event_from_row(r)?);
            }
            // The position first: a subscriber that registers meanwhile skips what it
            // will also read from the store.
            let mut log = self.shared.log.lock();
            log.last_seq = log.last_seq.max(last);
            drop(log);
            self.last = last;
            self.sink.committed(&events);
            if rows.len() < PAGE as usize {
                return Ok(());
            }
        }
    }

    fn follow_schema(&mut self, client: &mut Client) -> Result<(), postgres::Error> {
        let version = client
            .query_one("SELECT schema FROM log_head", &[])?
            .try_get::<_, i64>(0)? as u64;
        if version <= *self.shared.schema_version.lock() {
            return Ok(());
        }
        match super::load_schema(client) {
            Ok((collections, endpoints)) => {
                self.shared
                    .set_schema(Some(version), Some(&collections), Some(&endpoints));
                Ok(())
            }
            Err(crate::error::StoreError::Postgres(e)) => Err(e),
            Err(e) => {
                tracing::error!(error = %e, "collections changed by another node could not be read");
                Ok(())
            }
        }
    }
}
