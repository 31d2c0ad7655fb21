//! The delivery loop. One worker per enabled endpoint walks that endpoint's queue (in
//! sequence order unless the endpoint gave order up), so a slow or dead endpoint only
//! ever delays itself (seed 001: "one consumer's failure does not add latency to all");
//! a global semaphore bounds how many requests are in flight across endpoints.
//! Everything the workers decide is written back through the Hub, so a crash loses
//! nothing: pending deliveries are simply picked up again on restart (at-least-once,
//! with a stable `webhook-id`). On the cluster engine a worker runs only on the node
//! holding its endpoint's lease.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use polyport_core::webhook::{Attempt, AttemptOutcome, Delivery, Endpoint};
use polyport_core::{AuthContext, Hub, Origin, SubscribeRequest, TopicFilter};
use tokio::sync::{Notify, Semaphore};

use crate::WebhookConfig;
use crate::sign::sign;
use crate::ssrf::Policy;

fn ctx() -> AuthContext {
    AuthContext::system(Origin("webhook"))
}

/// State shared by the supervisor and its workers.
pub(crate) struct Shared {
    pub(crate) hub: Hub,
    pub(crate) client: reqwest::Client,
    pub(crate) policy: Arc<Policy>,
    pub(crate) cfg: WebhookConfig,
    /// Signalled on every committed event, so idle workers look for new deliveries.
    pub(crate) wake: Notify,
    pub(crate) in_flight: Semaphore,
}

/// Runs until the hub shuts down.
pub(crate) async fn supervise(shared: Arc<Shared>) {
    let shutdown = shared.hub.shutdown_token();
    tokio::spawn(waker(shared.clone()));
    let mut workers: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        workers.retain(|_, h| !h.is_finished());
        if let Ok(eps) = shared.hub.endpoints(&ctx()) {
            for ep in eps.iter().filter(|e| e.spec.enabled) {
                if workers.contains_key(&ep.id) {
                    continue;
                }
                // On the cluster engine another node may be walking this queue; it is
                // tried again every turn, so a survivor takes over a dead node's.
                match shared.hub.webhook_lease(&ctx(), &ep.id).await {
                    Ok(Some(lease)) => {
                        let (s, id) = (shared.clone(), ep.id.clone());
                        workers.insert(ep.id.clone(), tokio::spawn(worker(s, id, lease)));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(endpoint = %ep.id, error = %e, "webhook lease not taken");
                    }
                }
            }
        }
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = shared.hub.endpoints_changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    for (_, h) in workers {
        let _ = h.await;
    }
}

/// Turns every durable event into a wake-up for the workers while an endpoint is
/// enabled: a server without webhooks is not woken for each event it commits.
async fn waker(shared: Arc<Shared>) {
    let shutdown = shared.hub.shutdown_token();
    let Ok(all) = TopicFilter::new("#") else {
        return;
    };
    loop {
        // One enabled through another node shows within the second.
        loop {
            let changed = shared.hub.endpoints_changed();
            if any_enabled(&shared) {
                break;
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
        let req = SubscribeRequest {
            filters: vec![all.clone()],
            overflow: polyport_core::Overflow::Notify,
            durable_only: true,
            ..SubscribeRequest::default()
        };
        let Ok(mut sub) = shared.hub.subscribe(&ctx(), req).await else {
            return;
        };
        // What committed before is in the endpoints' queues already: look once.
        shared.wake.notify_waiters();
        let mut check = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                item = sub.next() => match item {
                    Some(Ok(_)) => shared.wake.notify_waiters(),
                    _ => return,
                },
                _ = check.tick() => if !any_enabled(&shared) {
                    break;
                },
            }
        }
    }
}

fn any_enabled(shared: &Shared) -> bool {
    shared
        .hub
        .endpoints(&ctx())
        .is_ok_and(|eps| eps.iter().any(|e| e.spec.enabled))
}

/// Deliveries one worker takes from its queue at a time.
const BATCH: usize = 64;

/// Walks one endpoint's queue: in order ([`ordered_batch`]) unless the endpoint gave
/// order up for a `concurrency` above 1 ([`unordered`]). Either way a crash loses
/// nothing: what was not recorded as delivered is still pending on restart.
async fn worker(
    shared: Arc<Shared>,
    endpoint_id: String,
    lease: Box<dyn polyport_core::cluster::Lease>,
) {
    let shutdown = shared.hub.shutdown_token();
    let mut last_send: Option<Instant> = None;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        if !lease.held() {
            tracing::info!(endpoint = %endpoint_id, "webhook lease lost; another node may deliver now");
            return;
        }
        let Ok(ep) = shared.hub.endpoint(&ctx(), &endpoint_id) else {
            return;
        };
        if !ep.spec.enabled {
            return;
        }
        if ep.spec.concurrency() == 1 {
            ordered_batch(&shared, &ep, &mut last_send).await;
        } else {
            unordered(&shared, &endpoint_id, &*lease, &mut last_send).await;
        }
    }
}

/// One batch in order: the batch's events are read in one pass, sent one after another
/// over a kept-alive connection, and their attempts recorded together, so one group
/// commit (one fsync) covers the whole batch instead of one per delivery. A failure
/// ends the batch there: what follows waits behind its retry.
async fn ordered_batch(shared: &Shared, ep: &Endpoint, last_send: &mut Option<Instant>) {
    let shutdown = shared.hub.shutdown_token();
    let notified = shared.wake.notified();
    let queue = match shared
        .hub
        .next_deliveries(&ctx(), &ep.id, BATCH, None)
        .await
    {
        Ok(q) => q,
        Err(e) => {
            tracing::warn!(endpoint = %ep.id, error = %e, "reading the webhook queue failed");
            Vec::new()
        }
    };
    // The batch stops at the first delivery not due yet.
    let batch: Vec<&Delivery> = queue.iter().take_while(|d| due_in(d).is_zero()).collect();
    if batch.is_empty() {
        let wait = queue.first().map(due_in).unwrap_or(Duration::from_secs(1));
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(wait.min(Duration::from_secs(1))) => {}
            _ = shutdown.cancelled() => {}
        }
        return;
    }
    let seqs: Vec<u64> = batch.iter().map(|d| d.seq).collect();
    let events = match shared.hub.events(&ctx(), &seqs).await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "reading webhook events failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            return;
        }
    };
    let mut records = Vec::with_capacity(batch.len());
    for (d, event) in batch.into_iter().zip(events) {
        pace(ep, last_send).await;
        let Some((attempt, outcome)) = attempt(shared, ep, d, event).await else {
            break;
        };
        let delivered = matches!(outcome, AttemptOutcome::Delivered);
        records.push(record(shared, ep, d, attempt, outcome));
        if !delivered || shutdown.is_cancelled() {
            break;
        }
    }
    // Submitted together, committed together.
    futures::future::join_all(records).await;
}

/// An endpoint that gave up order: up to `concurrency` attempts in flight at all times
/// (over as many kept-alive connections), the next due delivery sent as soon as one
/// finishes, and a failure only reschedules itself. Attempts are recorded as they
/// finish; those finishing together share a group commit. A delivery stays `busy`,
/// never read again, from when it is taken until its attempt is recorded. Returns
/// once the endpoint changes to ordered, is disabled or gone, the lease is lost or the
/// hub shuts down, with every attempt it made recorded.
async fn unordered(
    shared: &Arc<Shared>,
    endpoint_id: &str,
    lease: &dyn polyport_core::cluster::Lease,
    last_send: &mut Option<Instant>,
) {
    let shutdown = shared.hub.shutdown_token();
    let mut busy: HashSet<u64> = HashSet::new();
    let mut todo: VecDeque<(Delivery, Option<polyport_core::EventRef>)> = VecDeque::new();
    let mut sending = futures::stream::FuturesUnordered::new();
    let mut recording = futures::stream::FuturesUnordered::new();
    // Nothing more was due at the last look: look again when woken, or within a second
    // (a retry coming due).
    let mut exhausted = false;
    let mut notified = Box::pin(shared.wake.notified());
    let mut ep = match shared.hub.endpoint(&ctx(), endpoint_id) {
        Ok(ep) => ep,
        Err(_) => return,
    };
    loop {
        let stop = shutdown.is_cancelled()
            || !lease.held()
            || !ep.spec.enabled
            || ep.spec.concurrency() == 1;
        if !stop {
            while sending.len() < ep.spec.concurrency() {
                let Some((d, event)) = todo.pop_front() else {
                    break;
                };
                pace(&ep, last_send).await;
                let (shared, ep) = (shared.clone(), ep.clone());
                sending.push(async move {
                    let made = attempt(&shared, &ep, &d, event).await;
                    (d, made)
                });
            }
        }
        if stop && sending.is_empty() && recording.is_empty() {
            return;
        }
        if !stop && !exhausted && todo.is_empty() && sending.len() < ep.spec.concurrency() {
            // Armed before the read: an event committed after it wakes this loop.
            notified.set(shared.wake.notified());
            notified.as_mut().enable();
            match shared.hub.endpoint(&ctx(), endpoint_id) {
                Ok(e) => ep = e,
                Err(_) => return drain(sending, recording, shared, &ep).await,
            }
            let fresh = fetch_due(shared, endpoint_id, &busy).await;
            exhausted = fresh.is_empty();
            for (d, event) in fresh {
                busy.insert(d.seq);
                todo.push_back((d, event));
            }
            continue;
        }
        tokio::select! {
            Some((d, made)) = sending.next(), if !sending.is_empty() => match made {
                Some((attempt, outcome)) => {
                    let (shared, ep) = (shared.clone(), ep.clone());
                    recording.push(async move {
                        record(&shared, &ep, &d, attempt, outcome).await;
                        d.seq
                    });
                }
                // Not made (shutting down): still pending, for the next start.
                None => {
                    busy.remove(&d.seq);
                }
            },
            Some(seq) = recording.next(), if !recording.is_empty() => {
                busy.remove(&seq);
            }
            _ = notified.as_mut(), if exhausted => {
                exhausted = false;
            }
            _ = tokio::time::sleep(Duration::from_secs(1)), if exhausted => {
                exhausted = false;
                // A change of the endpoint (to ordered, disabled) shows within the second.
                match shared.hub.endpoint(&ctx(), endpoint_id) {
                    Ok(e) => ep = e,
                    Err(_) => return drain(sending, recording, shared, &ep).await,
                }
            }
            _ = shutdown.cancelled(), if !stop => {}
        }
    }
}

/// Lets attempts in flight finish and be recorded (the endpoint is gone).
async fn drain<S, R>(sending: S, recording: R, shared: &Arc<Shared>, ep: &Arc<Endpoint>)
where
    S: futures::Stream<Item = (Delivery, Option<(Attempt, AttemptOutcome)>)>,
    R: futures::Stream<Item = u64>,
{
    sending
        .for_each_concurrent(None, |(d, made)| async move {
            if let Some((attempt, outcome)) = made {
                record(shared, ep, &d, attempt, outcome).await;
            }
        })
        .await;
    recording.for_each(|_| async {}).await;
}

/// The endpoint's due deliveries that are not `busy`, with their events.
async fn fetch_due(
    shared: &Shared,
    endpoint_id: &str,
    busy: &HashSet<u64>,
) -> Vec<(Delivery, Option<polyport_core::EventRef>)> {
    let queue = match shared
        .hub
        .next_deliveries(&ctx(), endpoint_id, busy.len() + BATCH, Some(Utc::now()))
        .await
    {
        Ok(q) => q,
        Err(e) => {
            tracing::warn!(endpoint = %endpoint_id, error = %e, "reading the webhook queue failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Vec::new();
        }
    };
    let fresh: Vec<Delivery> = queue
        .into_iter()
        .filter(|d| !busy.contains(&d.seq))
        .collect();
    let seqs: Vec<u64> = fresh.iter().map(|d| d.seq).collect();
    match shared.hub.events(&ctx(), &seqs).await {
        Ok(events) => fresh.into_iter().zip(events).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "reading webhook events failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            Vec::new()
        }
    }
}

/// Waits out the endpoint's `rate_limit` since the last attempt started.
async fn pace(ep: &Endpoint, last_send: &mut Option<Instant>) {
    if let (Some(rate), Some(last)) = (ep.spec.rate_limit.filter(|r| *r > 0), *last_send) {
        let gap = Duration::from_secs_f64(1.0 / f64::from(rate));
        let since = last.elapsed();
        if since < gap {
            tokio::time::sleep(gap - since).await;
        }
    }
    *last_send = Some(Instant::now());
}

fn due_in(d: &Delivery) -> Duration {
    d.next_attempt_at
        .map(|t| (t - Utc::now()).to_std().unwrap_or(Duration::ZERO))
        .unwrap_or(Duration::ZERO)
}

/// Full-jitter backoff: uniformly random in `[0, base]`.
fn jitter(base_secs: u64) -> Duration {
    let ms = base_secs.saturating_mul(1000);
    Duration::from_millis(if ms == 0 {
        0
    } else {
        rand::random_range(0..=ms)
    })
}

/// `Retry-After` as seconds or an HTTP date, capped at a day.
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    let d = match v.parse::<u64>() {
        Ok(s) => Duration::from_secs(s),
        Err(_) => {
            let t = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
            (t - Utc::now()).to_std().unwrap_or(Duration::ZERO)
        }
    };
    Some(d.min(Duration::from_secs(24 * 3600)))
}

/// One attempt at a delivery; `None` when it was not made (shutting down).
async fn attempt(
    shared: &Shared,
    ep: &Endpoint,
    d: &Delivery,
    event: Option<polyport_core::EventRef>,
) -> Option<(Attempt, AttemptOutcome)> {
    let _permit = shared.in_flight.acquire().await.ok()?;
    let number = d.attempts + 1;
    let now = Utc::now();
    let started = Instant::now();
    let mut attempt = Attempt {
        delivery_id: d.id.clone(),
        number,
        at: now,
        status: None,
        latency_ms: 0,
        response: None,
        error: None,
    };
    let Some(event) = event else {
        attempt.error = Some("the event is no longer in the log (retention)".into());
        return Some((attempt, AttemptOutcome::Dead));
    };
    let outcome = match send(shared, ep, d, &event, now).await {
        Ok((status, headers, excerpt)) => {
            attempt.status = Some(status);
            attempt.response = excerpt;
            if (200..300).contains(&status) {
                AttemptOutcome::Delivered
            } else if status == 410 {
                AttemptOutcome::DisableEndpoint("the endpoint answered 410 Gone".into())
            } else {
                attempt.error = Some(format!("HTTP {status}"));
                let hint = if matches!(status, 429 | 503) {
                    retry_after(&headers)
                } else {
                    None
                };
                failure(shared, ep, number, hint)
            }
        }
        Err(e) => {
            attempt.error = Some(e);
            failure(shared, ep, number, None)
        }
    };
    attempt.latency_ms = started.elapsed().as_millis() as u64;
    metrics::histogram!("polyport_webhook_latency_seconds").record(started.elapsed().as_secs_f64());
    Some((attempt, outcome))
}

/// What a failed attempt leads to.
fn failure(
    shared: &Shared,
    ep: &Endpoint,
    number: u32,
    retry_after: Option<Duration>,
) -> AttemptOutcome {
    if let Some(since) = ep.failing_since
        && (Utc::now() - since).to_std().unwrap_or_default() > shared.cfg.disable_after
    {
        return AttemptOutcome::DisableEndpoint(format!(
            "every attempt failed for more than {} hours",
            shared.cfg.disable_after.as_secs() / 3600
        ));
    }
    let schedule = crate::policy::retry_schedule(ep);
    let Some(base) = schedule.get(number as usize - 1) else {
        return AttemptOutcome::Dead;
    };
    let delay = retry_after.unwrap_or_else(|| jitter(*base));
    AttemptOutcome::RetryAt(Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default())
}

/// Records an attempt through the Hub (a durable write: the caller submits a batch of
/// these at once so they share a commit).
async fn record(
    shared: &Shared,
    ep: &Endpoint,
    d: &Delivery,
    attempt: Attempt,
    outcome: AttemptOutcome,
) {
    let label = match &outcome {
        AttemptOutcome::Delivered => "delivered",
        AttemptOutcome::RetryAt(_) => "retry",
        AttemptOutcome::Dead => "dead",
        AttemptOutcome::DisableEndpoint(_) => "disabled",
    };
    metrics::counter!("polyport_webhook_attempts_total", "outcome" => label).increment(1);
    if let AttemptOutcome::DisableEndpoint(reason) = &outcome {
        tracing::warn!(endpoint = %ep.id, url = %ep.spec.url, %reason, "webhook endpoint disabled");
    }
    if let Err(e) = shared
        .hub
        .record_attempt(&ctx(), &ep.id, d.seq, attempt, outcome)
        .await
    {
        tracing::error!(endpoint = %ep.id, seq = d.seq, error = %e, "recording a webhook attempt failed");
    }
}

/// One signed POST. Returns status, headers and the first KiB of the body.
async fn send(
    shared: &Shared,
    ep: &Endpoint,
    d: &Delivery,
    event: &polyport_core::EventRef,
    now: DateTime<Utc>,
) -> Result<(u16, reqwest::header::HeaderMap, Option<String>), String> {
    // IP-literal hosts bypass the resolver, so vet them here every time.
    let url = shared.policy.check_literal(&ep.spec.url)?;
    let body = event.cloudevent_json().clone();
    let ts = now.timestamp();
    let signatures: Vec<String> = ep
        .signing_secrets(now)
        .into_iter()
        .filter_map(|s| sign(s, &d.id, ts, &body))
        .collect();
    let mut req = shared
        .client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &d.id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signatures.join(" "))
        .timeout(shared.cfg.timeout);
    for (k, v) in &ep.spec.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let res = req.body(body).send().await.map_err(describe)?;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let excerpt = match tokio::time::timeout(Duration::from_secs(2), res.bytes()).await {
        Ok(Ok(b)) if !b.is_empty() => {
            let n = b.len().min(1024);
            Some(String::from_utf8_lossy(&b[..n]).into_owned())
        }
        _ => None,
    };
    Ok((status, headers, excerpt))
}

fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_redirect() {
        "redirect (not followed)"
    } else {
        "request failed"
    };
    let mut msg = format!("{kind}: {e}");
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}
