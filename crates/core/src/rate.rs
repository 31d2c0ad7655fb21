//! Request rate per identity: one token bucket per caller, shared by every door, so an
//! identity that floods REST cannot dodge its limit over MQTT, and one noisy identity
//! cannot starve the others. A caller with no identity is counted by its address, so
//! anonymous clients do not share one bucket.
//!
//! Request/response doors refuse a request over the rate (HTTP 429 with `Retry-After`,
//! gRPC `RESOURCE_EXHAUSTED`) through [`Hub::admit_request`]. Brokers pace instead: a
//! connection holds its caller's [`Bucket`] and [`Bucket::pace`]s each publish, so the
//! publisher's socket stops being read until the rate allows the next one — TCP
//! back-pressure, as RabbitMQ's flow control does — and no QoS 0 message is dropped for
//! going too fast.
//!
//! Off by default: one identity often speaks for a whole service (a backend's API key),
//! so any fixed number would be wrong for someone; the connection caps per address are
//! the default guard against a flood.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::auth::AuthContext;
use crate::error::{HubError, HubResult};
use crate::event::Origin;
use crate::hub::Hub;

/// A sustained rate and the burst allowed above it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Requests per second, sustained.
    pub per_second: f64,
    /// Requests that may come at once after a quiet spell.
    pub burst: f64,
}

/// Whole seconds for a `Retry-After` header, rounded up so a client that obeys it is
/// admitted (RFC 9110 has no fractions).
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_millis().div_ceil(1000) as u64).max(1)
}

/// One caller's tokens.
#[derive(Debug)]
pub struct Bucket {
    limit: RateLimit,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            state: Mutex::new(State {
                tokens: limit.burst,
                at: Instant::now(),
            }),
        }
    }

    fn refill(&self, s: &mut State, now: Instant) {
        let earned = now.saturating_duration_since(s.at).as_secs_f64() * self.limit.per_second;
        s.tokens = (s.tokens + earned).min(self.limit.burst);
        s.at = now;
    }

    /// Takes one token, or says how long until one is there.
    pub fn try_take(&self) -> Result<(), Duration> {
        let mut s = self.state.lock();
        self.refill(&mut s, Instant::now());
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64(
            (1.0 - s.tokens) / self.limit.per_second,
        ))
    }

    /// Takes one token, waiting for it when there is none: the token is reserved at once
    /// (the balance may go negative), so callers waiting together are served in the order
    /// they came, each after one sleep.
    pub async fn pace(&self, origin: Origin) {
        let wait = {
            let mut s = self.state.lock();
            self.refill(&mut s, Instant::now());
            s.tokens -= 1.0;
            match s.tokens >= 0.0 {
                true => return,
                false => Duration::from_secs_f64(-s.tokens / self.limit.per_second),
            }
        };
        metrics::counter!("polyport_rate_limited_total", "origin" => origin.0, "action" => "paced")
            .increment(1);
        tokio::time::sleep(wait).await;
    }

    fn full(&self) -> bool {
        let mut s = self.state.lock();
        self.refill(&mut s, Instant::now());
        s.tokens >= self.limit.burst
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Identity(Arc<str>),
    Address(IpAddr),
}

/// Every caller's bucket.
#[derive(Debug)]
pub(crate) struct Rates {
    limit: Option<RateLimit>,
    buckets: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    map: HashMap<Key, Arc<Bucket>>,
    /// Size at which idle buckets are swept next (they are full again and held by no
    /// connection, so forgetting them changes nothing).
    sweep_at: usize,
}

const SWEEP_FLOOR: usize = 4096;

impl Rates {
    pub(crate) fn new(limit: Option<RateLimit>) -> Self {
        let limit = limit.filter(|l| l.per_second > 0.0);
        Self {
            limit: limit.map(|l| RateLimit {
                per_second: l.per_second,
                burst: l.burst.max(1.0),
            }),
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                sweep_at: SWEEP_FLOOR,
            }),
        }
    }

    fn bucket(&self, ctx: &AuthContext, addr: Option<IpAddr>) -> Option<Arc<Bucket>> {
        let limit = self.limit?;
        if ctx.is_system() {
            return None;
        }
        let key = match (&ctx.identity, addr) {
            (Some(id), _) => Key::Identity(Arc::from(id.id.as_str())),
            (None, Some(a)) => Key::Address(a),
            (None, None) => Key::Identity(Arc::from("")),
        };
        let mut b = self.buckets.lock();
        if let Some(found) = b.map.get(&key) {
            return Some(found.clone());
        }
        if b.map.len() >= b.sweep_at {
            b.map.retain(|_, v| Arc::strong_count(v) > 1 || !v.full());
            b.sweep_at = (b.map.len() * 2).max(SWEEP_FLOOR);
        }
        let fresh = Arc::new(Bucket::new(limit));
        b.map.insert(key, fresh.clone());
        Some(fresh)
    }
}

impl Hub {
    /// The bucket a connection keeps for its caller and [`Bucket::pace`]s its publishes
    /// with; `None` when no rate is configured (or the caller is the server itself).
    pub fn rate_bucket(&self, ctx: &AuthContext, addr: Option<IpAddr>) -> Option<Arc<Bucket>> {
        self.inner.rates.bucket(ctx, addr)
    }

    /// Admits one request of a request/response door, or refuses it with when to retry.
    pub fn admit_request(&self, ctx: &AuthContext, addr: Option<IpAddr>) -> HubResult<()> {
        let Some(bucket) = self.inner.rates.bucket(ctx, addr) else {
            return Ok(());
        };
        bucket.try_take().map_err(|retry_after| {
            metrics::counter!("polyport_rate_limited_total", "origin" => ctx.origin.0, "action" => "refused")
                .increment(1);
            HubError::RateLimited { retry_after }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: f64, burst: f64) -> RateLimit {
        RateLimit { per_second, burst }
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let b = Bucket::new(limit(10.0, 3.0));
        for _ in 0..3 {
            assert!(b.try_take().is_ok());
        }
        let wait = b.try_take().expect_err("the burst is spent");
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::from_millis(50),
            "{wait:?}"
        );
        std::thread::sleep(Duration::from_millis(110));
        assert!(b.try_take().is_ok(), "one token earned back");
        assert!(b.try_take().is_err());
    }

    #[tokio::test]
    async fn pacing_spreads_waiters_at_the_rate() {
        let b = Arc::new(Bucket::new(limit(1000.0, 1.0)));
        let start = Instant::now();
        for _ in 0..51 {
            b.pace(Origin("test")).await;
        }
        // One from the burst, fifty at 1000/s.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(48), "not paced: {took:?}");
        assert!(took < Duration::from_millis(1000), "{took:?}");
    }

    #[test]
    fn unlimited_or_zero_rate_gives_no_bucket() {
        let anyone = AuthContext::anonymous(Origin("test"));
        assert!(Rates::new(None).bucket(&anyone, None).is_none());
        assert!(
            Rates::new(Some(limit(0.0, 5.0)))
                .bucket(&anyone, None)
                .is_none()
        );
        assert!(
            Rates::new(Some(limit(1.0, 1.0)))
                .bucket(&AuthContext::system(Origin("t")), None)
                .is_none()
        );
    }

    #[test]
    fn anonymous_callers_are_told_apart_by_address() {
        let rates = Rates::new(Some(limit(1.0, 1.0)));
        let anyone = AuthContext::anonymous(Origin("test"));
        let a = rates
            .bucket(&anyone, Some([10, 0, 0, 1].into()))
            .expect("limited");
        let b = rates
            .bucket(&anyone, Some([10, 0, 0, 2].into()))
            .expect("limited");
        assert!(
            a.try_take().is_ok() && b.try_take().is_ok(),
            "separate buckets"
        );
        let a2 = rates
            .bucket(&anyone, Some([10, 0, 0, 1].into()))
            .expect("limited");
        assert!(a2.try_take().is_err(), "the same bucket again");
    }
}
