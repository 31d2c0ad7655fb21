//! The event log as a JetStream stream: the outbox relay of docs/cluster.md.
//!
//! A record change and its event commit together in Postgres, which numbers the log
//! (`log_head`); one node at a time (the holder of the `log-relay` lease) publishes the
//! committed events in order to the deployment's stream `polyport-{bucket}-log`, on
//! `polyport.{bucket}.log.{topic}` (each topic level one token, percent-encoded where
//! NATS would read it as syntax; an empty level is `%`), with
//! - `Nats-Msg-Id` = `{epoch}:{seq}`, so a relay that dies after publishing and
//!   publishes again is deduplicated by JetStream, and
//! - `Nats-Expected-Last-Sequence` = `seq - 1`, so the stream's sequence *is* the event's
//!   `sequence` every face shows, or the publish fails and the relay starts over from
//!   the stream's own last sequence.
//!
//! The message is the event's CloudEvent JSON (the `/api/poll` and webhook shape), with
//! its topic also in `Polyport-Topic`. The stream's description names the log's epoch:
//! a stream left by another log (the Postgres schema recreated) is replaced. Any NATS
//! client reads the log from it (an ordered consumer from sequence N is `since=N`), and
//! it is where a node's fan-out will come from once tens of nodes make following
//! Postgres too costly; today each node still follows Postgres, so the relay lagging
//! (NATS away) delays nothing but the stream, and catches up when NATS is back.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use polyport_core::{EventRef, Hub};
use tokio_util::sync::CancellationToken;

/// The lease only one node relays under.
const LEASE: &str = "log-relay";
/// Events read (and publishes in flight) at once.
const PAGE: usize = 256;
/// How often an idle relay looks at the log's head (a local read).
const IDLE: Duration = Duration::from_millis(10);
/// After a failure, or while another node holds the lease.
const RETRY: Duration = Duration::from_secs(1);

/// Why relaying stopped; it starts over after [`RETRY`].
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("JetStream: {0}")]
    Nats(String),
    #[error("reading the log: {0}")]
    Log(#[from] polyport_core::HubError),
}

fn nats(e: impl std::fmt::Display) -> RelayError {
    RelayError::Nats(e.to_string())
}

/// The deployment's log stream.
pub fn stream_name(bucket: &str) -> String {
    format!("polyport-{bucket}-log")
}

/// `polyport.{bucket}.log.{topic}`, a NATS token per topic level.
pub fn subject(bucket: &str, topic: &str) -> String {
    let mut s = format!("polyport.{bucket}.log");
    for level in topic.split('/') {
        s.push('.');
        if level.is_empty() {
            s.push('%');
        }
        for b in level.bytes() {
            if b.is_ascii_alphanumeric() || b"-_$:=+,;@!~()'&#".contains(&b) {
                s.push(b as char);
            } else {
                s.push_str(&format!("%{b:02X}"));
            }
        }
    }
    s
}

/// Relays until `stop` fires: whichever node holds the lease publishes; the others
/// wait to take it over.
pub(crate) async fn run(js: jetstream::Context, hub: Hub, bucket: String, stop: CancellationToken) {
    loop {
        let lease = tokio::select! {
            l = hub.try_lease(LEASE) => l,
            _ = stop.cancelled() => return,
        };
        match lease {
            Ok(Some(lease)) => {
                if let Err(e) = relay(&js, &hub, &bucket, &*lease, &stop).await {
                    tracing::warn!(error = %e, "relaying the log to JetStream stopped; starting over");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "taking the log relay's lease failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Opens the stream for this log (made, or replaced when another log left it) and
/// returns it with the last sequence it holds.
async fn open(
    js: &jetstream::Context,
    bucket: &str,
    epoch: &str,
    first_seq: u64,
) -> Result<(stream::Stream, u64), RelayError> {
    let name = stream_name(bucket);
    let description = format!("Polyport event log, epoch {epoch}");
    if let Ok(s) = js.get_stream(&name).await
        && s.cached_info().config.description.as_deref() != Some(description.as_str())
    {
        tracing::warn!(stream = %name, "the log stream belongs to another log (epoch); replacing it");
        js.delete_stream(&name).await.map_err(nats)?;
    }
    let s = js
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            description: Some(description),
            subjects: vec![format!("polyport.{bucket}.log.>")],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(nats)?;
    let mut last = s.get_info().await.map_err(nats)?.state.last_sequence;
    if last + 1 < first_seq {
        // The log no longer holds what follows the stream (retention): the stream
        // continues at the log's first event, so its sequences stay the log's.
        s.purge().sequence(first_seq).await.map_err(nats)?;
        last = s.get_info().await.map_err(nats)?.state.last_sequence;
        if last + 1 != first_seq {
            return Err(RelayError::Nats(format!(
                "the stream cannot continue at sequence {first_seq} (it ends at {last})"
            )));
        }
    }
    Ok((s, last))
}

async fn relay(
    js: &jetstream::Context,
    hub: &Hub,
    bucket: &str,
    lease: &dyn polyport_core::cluster::Lease,
    stop: &CancellationToken,
) -> Result<(), RelayError> {
    let state = hub.log_state();
    let (_stream, mut relayed) = open(js, bucket, &state.epoch, state.first_seq).await?;
    tracing::info!(from = relayed + 1, "relaying the log to JetStream");
    let lag = metrics::gauge!("polyport_cluster_log_relay_lag");
    loop {
        if stop.is_cancelled() || !lease.held() {
            return Ok(());
        }
        let head = hub.log_state();
        if head.epoch != state.epoch {
            return Ok(()); // a new log: open its stream
        }
        lag.set(head.last_seq.saturating_sub(relayed) as f64);
        if head.last_seq <= relayed {
            tokio::select! {
                _ = tokio::time::sleep(IDLE) => {}
                _ = stop.cancelled() => return Ok(()),
            }
            continue;
        }
        let page = hub.read_log(relayed, PAGE).await?;
        let mut acks = Vec::with_capacity(page.len());
        for e in &page {
            let Some(seq) = e.seq else { continue };
            acks.push((seq, publish(js, bucket, &state.epoch, seq, e).await?));
        }
        for (seq, ack) in acks {
            let ack = ack.await.map_err(nats)?;
            if !ack.duplicate && ack.sequence != seq {
                return Err(RelayError::Nats(format!(
                    "event {seq} became stream message {}",
                    ack.sequence
                )));
            }
            relayed = seq;
        }
    }
}

async fn publish(
    js: &jetstream::Context,
    bucket: &str,
    epoch: &str,
    seq: u64,
    e: &EventRef,
) -> Result<jetstream::context::PublishAckFuture, RelayError> {
    let msg = jetstream::message::PublishMessage::build()
        .payload(Bytes::clone(e.cloudevent_json()))
        .message_id(format!("{epoch}:{seq}"))
        .expected_last_sequence(seq - 1)
        .header("Polyport-Topic", e.topic.as_str());
    js.send_publish(subject(bucket, e.topic.as_str()), msg)
        .await
        .map_err(nats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_levels_become_tokens_and_syntax_is_escaped() {
        assert_eq!(
            subject("b", "sensors/t1/temp"),
            "polyport.b.log.sensors.t1.temp"
        );
        assert_eq!(
            subject("b", "a.b/*/>/ x//"),
            "polyport.b.log.a%2Eb.%2A.%3E.%20x.%.%"
        );
        assert_eq!(subject("b", "$SYS/x%"), "polyport.b.log.$SYS.x%25");
    }
}
