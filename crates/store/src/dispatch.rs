//! Committed events leave the writer thread for a task on the runtime, which fans them
//! out: one cross-thread wake per batch instead of one per subscriber.
//!
//! The bus wakes every matching subscriber's task. From the writer thread (outside the
//! runtime) each wake went through the runtime's shared inject queue, a mutex the workers
//! take too; one write fanned out to 10,000 SSE and WebSocket subscribers spent most of
//! its latency there (`polyport bench fanout`). From a task, the wakes land in the
//! worker's own run queue. Order is kept: one task, one queue, batches in commit order.

use std::sync::Arc;

use polyport_core::engine::EventSink;
use polyport_core::event::EventRef;
use tokio::sync::mpsc;

/// Batches handed over and not yet fanned out; past this the writer waits (a fanout that
/// cannot keep up slows writes rather than growing memory).
const BACKLOG: usize = 1024;

pub(crate) struct Dispatch {
    tx: mpsc::Sender<Vec<EventRef>>,
    /// Where events go when the task is gone (the runtime is shutting down).
    direct: Arc<dyn EventSink>,
}

impl Dispatch {
    /// Starts the fan-out task on the current runtime.
    pub(crate) fn start(sink: Arc<dyn EventSink>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Vec<EventRef>>(BACKLOG);
        let fan = sink.clone();
        tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                fan.committed(&batch);
            }
        });
        Self { tx, direct: sink }
    }
}

impl EventSink for Dispatch {
    fn committed(&self, events: &[EventRef]) {
        if let Err(e) = self.tx.blocking_send(events.to_vec()) {
            self.direct.committed(&e.0);
        }
    }
}
