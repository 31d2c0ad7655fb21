//! Counters bumped once per message, resolved once per process.
//!
//! `metrics::counter!` builds a key and looks it up in the recorder's registry on every
//! call (hashing, a lock, an `Arc` clone): on an MQTT fan-in that was a tenth of the
//! broker's CPU (`polyport bench mqtt --only window`, perf). A [`HotCounter`] is a
//! `static` that asks the recorder once and keeps the handle.
//!
//! The handle is bound on first use, so the recorder must be installed before the first
//! message: `polyport serve` installs it before it opens the Hub. A counter first used
//! with no recorder installed stays a no-op for the life of the process.

use std::sync::OnceLock;

/// A counter with a fixed name and label set, for `static`s on hot paths.
pub struct HotCounter {
    name: &'static str,
    label: Option<(&'static str, &'static str)>,
    handle: OnceLock<metrics::Counter>,
}

impl HotCounter {
    /// A counter without labels.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            label: None,
            handle: OnceLock::new(),
        }
    }

    /// A counter with one fixed label.
    pub const fn labelled(name: &'static str, key: &'static str, value: &'static str) -> Self {
        Self {
            name,
            label: Some((key, value)),
            handle: OnceLock::new(),
        }
    }

    /// Adds `n`.
    pub fn increment(&self, n: u64) {
        self.handle
            .get_or_init(|| match self.label {
                None => metrics::counter!(self.name),
                Some((k, v)) => metrics::counter!(self.name, k => v),
            })
            .increment(n);
    }
}

/// Counts for one stream (a subscriber's connection) and adds them to a shared
/// [`HotCounter`] in batches: 64 at a time, at least once a second while it counts, and
/// when dropped. A shared counter bumped per delivery is a cache line every core fights
/// over when one event goes to thousands of subscribers at once.
pub struct Tally {
    counter: &'static HotCounter,
    pending: u64,
    since: std::time::Instant,
}

impl Tally {
    /// A tally feeding `counter`.
    pub fn new(counter: &'static HotCounter) -> Self {
        Self {
            counter,
            pending: 0,
            since: std::time::Instant::now(),
        }
    }

    /// Counts one.
    pub fn add(&mut self) {
        self.pending += 1;
        if self.pending >= 64 || self.since.elapsed() >= std::time::Duration::from_secs(1) {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.pending > 0 {
            self.counter.increment(self.pending);
            self.pending = 0;
        }
        self.since = std::time::Instant::now();
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.flush();
    }
}
