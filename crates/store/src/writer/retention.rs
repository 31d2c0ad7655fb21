//! Event-log retention: trimming the oldest events by count or age, a bounded amount
//! per pass.

use chrono::Utc;

use super::Writer;
use crate::tx::Db;

/// Event-log retention; `None` keeps forever.
#[derive(Clone, Copy, Debug, Default)]
pub struct Retention {
    /// Keep at most this many events.
    pub max_events: Option<u64>,
    /// Drop events older than this.
    pub max_age: Option<std::time::Duration>,
}

/// Most events one pass deletes, so writers are never stalled for long.
const PASS: u64 = 50_000;

impl<D: Db> Writer<D> {
    pub(super) fn maintain(&mut self) {
        let Retention {
            max_events,
            max_age,
        } = self.retention;
        if max_events.is_none() && max_age.is_none() {
            return;
        }
        let last = self.state.next_seq - 1;
        let first = self.shared.log.lock().first_seq;
        let bound = first.saturating_add(PASS);
        let cutoff = match max_events {
            Some(n) => (bound - 1).min(last.saturating_sub(n)),
            None => (bound - 1).min(last),
        };
        let upto = (max_events.is_some() && cutoff >= first).then_some(cutoff);
        let older_than = max_age.map(|age| {
            let limit =
                Utc::now().timestamp_micros() - i64::try_from(age.as_micros()).unwrap_or(i64::MAX);
            (limit, bound)
        });
        // The position is recorded before anything is deleted: with every event gone
        // (by age), the log's position must still not go back on the next open.
        match self.db.trim_log(last, upto, older_than) {
            Ok((0, _)) => {}
            Ok((n, first)) => {
                let first_seq = first.unwrap_or(last + 1);
                self.shared.log.lock().first_seq = first_seq;
                tracing::debug!(deleted = n, first_seq, "event log retention applied");
            }
            Err(e) => tracing::warn!(error = %e, "retention failed"),
        }
    }
}
