//! Event-log retention: trimming the oldest events by count or age, a bounded amount
//! per pass.

use chrono::Utc;
use rusqlite::params;

use super::Writer;

/// Event-log retention; `None` keeps forever.
#[derive(Clone, Copy, Debug, Default)]
pub struct Retention {
    /// Keep at most this many events.
    pub max_events: Option<u64>,
    /// Drop events older than this.
    pub max_age: Option<std::time::Duration>,
}

impl Writer {
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
        // Bound the work per pass so writers are never stalled for long.
        let mut cutoff = first.saturating_add(50_000).saturating_sub(1);
        if let Some(n) = max_events {
            cutoff = cutoff.min(last.saturating_sub(n));
        } else {
            cutoff = cutoff.min(last);
        }
        let result = (|| -> rusqlite::Result<u64> {
            // Recorded before anything is deleted: with every event gone (by age), the
            // log's position must still not go back on the next open.
            crate::db::exec(
                &self.conn,
                "INSERT INTO meta (key, value) VALUES ('last_seq', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![last.to_string()],
            )?;
            let mut deleted = 0;
            if max_events.is_some() && cutoff >= first {
                deleted += self
                    .conn
                    .execute("DELETE FROM events WHERE seq <= ?1", params![cutoff as i64])?
                    as u64;
            }
            if let Some(age) = max_age {
                let limit = Utc::now().timestamp_micros()
                    - i64::try_from(age.as_micros()).unwrap_or(i64::MAX);
                deleted += self.conn.execute(
                    "DELETE FROM events WHERE time < ?1 AND seq <= ?2",
                    params![limit, first.saturating_add(50_000) as i64],
                )? as u64;
            }
            Ok(deleted)
        })();
        match result {
            Ok(0) => {}
            Ok(n) => {
                let first_seq = self
                    .conn
                    .query_row("SELECT min(seq) FROM events", [], |r| {
                        r.get::<_, Option<i64>>(0)
                    })
                    .ok()
                    .flatten()
                    .map(|s| s as u64)
                    .unwrap_or(last + 1);
                self.shared.log.lock().first_seq = first_seq;
                tracing::debug!(deleted = n, first_seq, "event log retention applied");
            }
            Err(e) => tracing::warn!(error = %e, "retention failed"),
        }
    }
}
