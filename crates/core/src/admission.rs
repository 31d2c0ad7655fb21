//! Connection caps every listener applies: at most `max_connections` open at once, and at
//! most `max_per_address` from one client address, so one client (or one flood) cannot take
//! a listener from everyone else. A connection over a cap is not just dropped: the listener
//! answers it in its protocol's words (HTTP 503, MQTT CONNACK "quota exceeded", AMQP 530,
//! STOMP ERROR) so the client can say why, then closes it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

/// Counts a configured cap being hit (`polyport_limits_hit_total{limit}`), whichever
/// face hit it, so one alert covers them all. `limit` names the setting.
pub fn limit_hit(limit: &'static str) {
    metrics::counter!("polyport_limits_hit_total", "limit" => limit).increment(1);
}

/// Caps for one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once on the listener.
    pub max_connections: usize,
    /// Connections open at once from one client IP address.
    pub max_per_address: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 50_000,
            max_per_address: 10_000,
        }
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The listener holds its maximum.
    #[error("this listener holds its maximum of {0} connections; try again later")]
    ListenerFull(usize),
    /// The client's address holds its maximum.
    #[error("your address holds its maximum of {0} connections to this listener; close some first")]
    AddressFull(usize),
}

impl Refusal {
    /// A label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::ListenerFull(_) => "listener_full",
            Refusal::AddressFull(_) => "address_full",
        }
    }
}

/// Counts one listener's open connections.
#[derive(Debug)]
pub struct Admission {
    label: &'static str,
    limits: ConnectionLimits,
    open: AtomicUsize,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    /// Refused connections still being answered; past a bound they are dropped unanswered
    /// so a flood cannot make the refusals themselves the load.
    answering: AtomicUsize,
    /// When a refusal was last logged at WARN (Unix seconds): a flood of refusals logs
    /// one line a second, the metric counts them all.
    last_warned: std::sync::atomic::AtomicU64,
}

/// Refusals answered at once per listener; more are closed without an answer.
const MAX_ANSWERING: usize = 256;

impl Admission {
    /// The listener's name, for logs and metrics.
    pub fn label(&self) -> &'static str {
        self.label
    }

    /// Caps for the listener named `label` (for logs and metrics).
    pub fn new(label: &'static str, limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            label,
            limits,
            open: AtomicUsize::new(0),
            per_address: Mutex::new(HashMap::new()),
            answering: AtomicUsize::new(0),
            last_warned: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Admits a connection from `ip`: a permit that releases its place when dropped, or
    /// the reason it is refused.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        let mut per = self.per_address.lock();
        let mine = per.get(&ip).copied().unwrap_or(0);
        let refusal = if self.open.load(Ordering::Relaxed) >= self.limits.max_connections {
            Some(Refusal::ListenerFull(self.limits.max_connections))
        } else if mine >= self.limits.max_per_address {
            Some(Refusal::AddressFull(self.limits.max_per_address))
        } else {
            None
        };
        if let Some(r) = refusal {
            drop(per);
            metrics::counter!("polyport_connections_refused_total", "listener" => self.label, "reason" => r.reason())
                .increment(1);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            if self.last_warned.swap(now, Ordering::Relaxed) != now {
                tracing::warn!(listener = self.label, %ip, reason = %r, "connection refused (polyport_connections_refused_total counts every one)");
            } else {
                tracing::debug!(listener = self.label, %ip, reason = %r, "connection refused");
            }
            return Err(r);
        }
        per.insert(ip, mine + 1);
        // Counted under the lock, so two admissions cannot both take the last place.
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        drop(per);
        metrics::gauge!("polyport_connections", "listener" => self.label).set(open as f64);
        Ok(Permit {
            admission: self.clone(),
            ip,
        })
    }

    /// A slot to answer a refused connection in, or `None` when too many are being
    /// answered already (then close it unanswered).
    pub fn answer_slot(self: &Arc<Self>) -> Option<AnswerSlot> {
        if self.answering.fetch_add(1, Ordering::Relaxed) >= MAX_ANSWERING {
            self.answering.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(AnswerSlot(self.clone()))
    }
}

/// A connection's place on its listener; dropping it frees the place.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let a = &self.admission;
        {
            let mut per = a.per_address.lock();
            if let Some(n) = per.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    per.remove(&self.ip);
                }
            }
        }
        let open = a.open.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("polyport_connections", "listener" => a.label).set(open as f64);
    }
}

/// See [`Admission::answer_slot`].
#[derive(Debug)]
pub struct AnswerSlot(Arc<Admission>);

impl Drop for AnswerSlot {
    fn drop(&mut self) {
        self.0.answering.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_permits_free_their_place() {
        let a = Admission::new(
            "t",
            ConnectionLimits {
                max_connections: 3,
                max_per_address: 2,
            },
        );
        let (x, y): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let p1 = a.admit(x).unwrap();
        let _p2 = a.admit(x).unwrap();
        assert_eq!(a.admit(x).unwrap_err(), Refusal::AddressFull(2));
        let _p3 = a.admit(y).unwrap();
        assert_eq!(a.admit(y).unwrap_err(), Refusal::ListenerFull(3));
        drop(p1);
        assert!(a.admit(x).is_ok());
    }
}
