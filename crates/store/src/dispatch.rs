//! Committed events leave the writer thread for a task on the runtime, which fans them
//! out: one cross-thread wake per batch instead of one per subscriber.
//!
//! The bus wakes every matching subscriber's task. From the writer thread (outside the
//! runtime) each wake went through the runtime's shared inject queue, a mutex the workers
//! take too; one write fanned out to 10,000 SSE and WebSocket subscribers spent most of
//! its latency there (`polyport bench fanout`). From a task, the wakes land in the
//! worker's own run queue. Order is kept: one task, one queue, batches in commit order.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use polyport_core::engine::EventSink;
use polyport_core::event::EventRef;
use tokio::sync::mpsc;

/// Batches handed over and not yet fanned out; past this the writer waits (a fanout that
/// cannot keep up slows writes rather than growing memory).
const BACKLOG: usize = 1024;

pub(crate) struct Dispatch {
    tx: mpsc::Sender<Vec<EventRef>>,
    /// Batches handed to the task and not yet fanned out.
    in_flight: Arc<AtomicUsize>,
    /// Where events go when the task is gone (the runtime is shutting down).
    direct: Arc<dyn EventSink>,
}

impl Dispatch {
    /// Starts the fan-out task on the current runtime.
    pub(crate) fn start(sink: Arc<dyn EventSink>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Vec<EventRef>>(BACKLOG);
        let fan = sink.clone();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let done = in_flight.clone();
        tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                fan.committed(&batch);
                done.fetch_sub(1, Ordering::SeqCst);
            }
        });
        Self {
            tx,
            in_flight,
            direct: sink,
        }
    }

    /// Whether [`Dispatch::hand_over`] will not have to wait.
    pub(crate) fn has_room(&self) -> bool {
        self.tx.capacity() > 0
    }

    /// Fans a batch out from a task on the runtime (an inline commit), after
    /// [`Dispatch::has_room`] said yes under the writer's lock: at once when nothing
    /// handed over earlier is still on its way, else behind it through the task.
    pub(crate) fn hand_over(&self, events: Vec<EventRef>) {
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            self.direct.committed(&events);
            return;
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.tx.try_send(events) {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let (mpsc::error::TrySendError::Full(batch) | mpsc::error::TrySendError::Closed(batch)) =
                e;
            self.direct.committed(&batch);
        }
    }
}

impl EventSink for Dispatch {
    fn committed(&self, events: &[EventRef]) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.tx.blocking_send(events.to_vec()) {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.direct.committed(&e.0);
        }
    }
}
