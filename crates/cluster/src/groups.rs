//! Named groups across nodes: members join the one node running a group, over core NATS.
//!
//! The node holding a group's lease answers joins on `polyport.{bucket}.group.{hash}`
//! (`hash`: FNV-1a of the group's key). A joiner sends its subscription request and an
//! inbox; the host joins the group on the joiner's behalf (one more member of the same
//! dispatcher) and streams what that member is given to the inbox, as far as the
//! joiner's credit allows; the joiner hands it to its local subscriber and sends back
//! credit, acknowledgements and its leave. Both ends beat every second and give the
//! other up after [`DEAD`] of silence: a host that lost a member hands its
//! unacknowledged events to the others, and a member whose host died joins the group
//! wherever it runs next (`polyport-core`'s `group_join`).
//!
//! Why not a JetStream durable consumer per group: the dispatcher applies record filters
//! and collection rules to what a member sees, and prefetch per member (AMQP's
//! `basic.qos` per consumer), which a consumer's subject filter and `max_ack_pending`
//! cannot say; and JetStream too runs each consumer on one leader. What this costs and
//! what it keeps is in docs/cluster.md.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{HeaderMap, Request, RequestErrorKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use polyport_core::cluster::{GroupJoin, GroupLink, LinkCtl, LinkedMember, MemberLink};
use polyport_core::subscription::Delivery;
use polyport_core::{Hub, HubError, HubResult, Item, Notice, Subscription};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// How often each end says it is alive.
const BEAT: Duration = Duration::from_secs(1);
/// Silence after which the other end is given up.
const DEAD: Duration = Duration::from_secs(4);
/// How long a join waits for the host's answer.
const ASK: Duration = Duration::from_secs(2);
/// What a message from host to member carries.
const KIND: &str = "Polyport-Group";
const REDELIVERIES: &str = "Polyport-Redeliveries";

/// This node's end of the group link.
pub struct NatsGroups {
    client: async_nats::Client,
    prefix: String,
    node: String,
    hub: Hub,
}

#[derive(Serialize, Deserialize)]
struct JoinAsk {
    join: GroupJoin,
    /// Where the host sends what the member is given.
    to: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum JoinAnswer {
    /// Joined: the member's credit, acks and leave go to this subject.
    Joined(String),
    /// This node does not run the group (any more).
    NotHere,
    /// The join was refused, as it would have been on the joiner's node.
    Refused(WireError),
}

/// A [`HubError`] as it crosses to the node that reports it.
#[derive(Serialize, Deserialize)]
struct WireError {
    kind: String,
    message: String,
}

impl From<&HubError> for WireError {
    fn from(e: &HubError) -> Self {
        let (kind, message) = match e {
            HubError::LimitReached(m) => ("limit", m.clone()),
            HubError::InvalidRequest(m) => ("invalid", m.clone()),
            HubError::Unavailable(m) => ("unavailable", m.clone()),
            HubError::PositionUnavailable { .. } | HubError::EpochMismatch { .. } => {
                ("invalid", e.to_string())
            }
            other => ("storage", other.to_string()),
        };
        Self {
            kind: kind.into(),
            message,
        }
    }
}

impl From<WireError> for HubError {
    fn from(w: WireError) -> Self {
        match w.kind.as_str() {
            "limit" => HubError::LimitReached(w.message),
            "invalid" => HubError::InvalidRequest(w.message),
            "unavailable" => HubError::Unavailable(w.message),
            _ => HubError::Storage(w.message),
        }
    }
}

/// What a member sends its host.
#[derive(Serialize, Deserialize, Default)]
struct Back {
    #[serde(default, skip_serializing_if = "is_zero")]
    credit: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    acks: Vec<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    leave: bool,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn unavailable(e: impl std::fmt::Display) -> HubError {
    HubError::Unavailable(format!("the cluster's NATS: {e}"))
}

impl NatsGroups {
    /// The link for `hub`'s groups on the deployment `bucket`.
    pub fn new(client: async_nats::Client, bucket: &str, node: String, hub: Hub) -> Arc<Self> {
        Arc::new(Self {
            client,
            prefix: format!("polyport.{bucket}.group"),
            node,
            hub,
        })
    }

    fn subject(&self, key: &str) -> String {
        format!("{}.{:016x}", self.prefix, fnv1a(key))
    }

    /// Answers one join on the host.
    async fn answer(&self, ask: JoinAsk) -> JoinAnswer {
        let sub = match self.hub.join_hosted(&ask.join).await {
            Ok(Some(sub)) => sub,
            Ok(None) => return JoinAnswer::NotHere,
            Err(e) => return JoinAnswer::Refused(WireError::from(&e)),
        };
        let back = self.client.new_inbox();
        let ctl = match self.client.subscribe(back.clone()).await {
            Ok(s) => s,
            Err(e) => return JoinAnswer::Refused(WireError::from(&unavailable(e))),
        };
        let credit = ask.join_queue();
        tokio::spawn(host_member(
            self.client.clone(),
            self.node.clone(),
            sub,
            ask.to,
            ctl,
            credit,
        ));
        JoinAnswer::Joined(back)
    }
}

impl JoinAsk {
    fn join_queue(&self) -> usize {
        self.join.member_queue()
    }
}

#[async_trait]
impl GroupLink for NatsGroups {
    async fn host(&self, key: &str) -> HubResult<Box<dyn std::any::Any + Send + Sync>> {
        let mut asks = self
            .client
            .subscribe(self.subject(key))
            .await
            .map_err(unavailable)?;
        let me = Arc::new(Self {
            client: self.client.clone(),
            prefix: self.prefix.clone(),
            node: self.node.clone(),
            hub: self.hub.clone(),
        });
        let task = tokio::spawn(async move {
            while let Some(msg) = asks.next().await {
                let Some(reply) = msg.reply.clone() else {
                    continue;
                };
                let answer = match serde_json::from_slice::<JoinAsk>(&msg.payload) {
                    Ok(ask) => me.answer(ask).await,
                    Err(e) => JoinAnswer::Refused(WireError {
                        kind: "invalid".into(),
                        message: format!("unreadable group join: {e}"),
                    }),
                };
                let body = serde_json::to_vec(&answer).unwrap_or_default();
                if let Err(e) = me.client.publish(reply, body.into()).await {
                    tracing::debug!(error = %e, "answering a group join failed");
                }
            }
        });
        Ok(Box::new(AbortOnDrop(task)))
    }

    async fn join(&self, join: &GroupJoin, queue: usize) -> HubResult<Option<LinkedMember>> {
        let to = self.client.new_inbox();
        let data = self
            .client
            .subscribe(to.clone())
            .await
            .map_err(unavailable)?;
        let ask = JoinAsk {
            join: join.clone(),
            to,
        };
        let body = serde_json::to_vec(&ask).map_err(|e| HubError::Storage(e.to_string()))?;
        let request = Request::new().payload(body.into()).timeout(Some(ASK));
        let reply = match self
            .client
            .send_request(self.subject(&join.key), request)
            .await
        {
            Ok(m) => m,
            Err(e)
                if matches!(
                    e.kind(),
                    RequestErrorKind::NoResponders | RequestErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(unavailable(e)),
        };
        match serde_json::from_slice::<JoinAnswer>(&reply.payload) {
            Ok(JoinAnswer::Joined(back)) => {
                let (member, link) =
                    polyport_core::cluster::linked(queue, self.hub.shutdown_token().child_token());
                tokio::spawn(remote_member(self.client.clone(), data, back, link, queue));
                Ok(Some(member))
            }
            Ok(JoinAnswer::NotHere) => Ok(None),
            Ok(JoinAnswer::Refused(w)) => Err(w.into()),
            Err(e) => Err(HubError::Storage(format!(
                "unreadable answer to a group join: {e}"
            ))),
        }
    }
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn kind_header(kind: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(KIND, kind);
    h
}

/// The host's side of one member on another node: streams what the group gives it,
/// within the credit the member sent.
async fn host_member(
    client: async_nats::Client,
    node: String,
    mut sub: Subscription,
    to: String,
    mut ctl: async_nats::Subscriber,
    mut credit: usize,
) {
    let acker = sub.acker();
    let mut heard = Instant::now();
    let mut beat = tokio::time::interval(BEAT);
    loop {
        tokio::select! {
            it = sub.next(), if credit > 0 => {
                let (headers, body) = match it {
                    Some(Ok(Item::Event(d))) => {
                        let Some(mut h) = crate::relay::encode(&node, &d.event) else {
                            continue;
                        };
                        h.insert(KIND, "event");
                        h.insert(REDELIVERIES, d.redeliveries.to_string().as_str());
                        credit -= 1;
                        (h, d.event.payload.clone())
                    }
                    Some(Ok(Item::Notice(n))) => {
                        (kind_header("notice"), Bytes::from(serde_json::to_vec(&n).unwrap_or_default()))
                    }
                    Some(Err(e)) => {
                        let body = serde_json::to_vec(&WireError::from(&e)).unwrap_or_default();
                        let _ = client.publish_with_headers(to, kind_header("end"), body.into()).await;
                        return;
                    }
                    // The group stopped here (its lease moved, or shutdown): the member
                    // joins it again wherever it runs now.
                    None => {
                        let _ = client.publish_with_headers(to, kind_header("end"), Bytes::new()).await;
                        return;
                    }
                };
                if client.publish_with_headers(to.clone(), headers, body).await.is_err() {
                    return;
                }
            }
            m = ctl.next() => {
                let Some(m) = m else { return };
                heard = Instant::now();
                let Ok(back) = serde_json::from_slice::<Back>(&m.payload) else {
                    continue;
                };
                credit += back.credit;
                for seq in back.acks {
                    acker.ack(seq);
                }
                if back.leave {
                    return;
                }
            }
            _ = beat.tick() => {
                if heard.elapsed() > DEAD {
                    tracing::info!(member = %to, "a group member on another node went silent; its messages go to the others");
                    return;
                }
                if client.publish_with_headers(to.clone(), kind_header("beat"), Bytes::new()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A member's side on its own node: hands on what the host streams and sends back
/// credit (as the member takes it), acknowledgements and beats.
async fn remote_member(
    client: async_nats::Client,
    mut data: async_nats::Subscriber,
    back: String,
    mut link: MemberLink,
    queue: usize,
) {
    let send = |b: Back| {
        let (client, back) = (client.clone(), back.clone());
        async move {
            let body = serde_json::to_vec(&b).unwrap_or_default();
            client.publish(back, body.into()).await.is_ok()
        }
    };
    let threshold = (queue / 4).max(1);
    let mut granted = 0usize;
    let mut pending: VecDeque<HubResult<Item>> = VecDeque::new();
    let mut heard = Instant::now();
    let mut beat = tokio::time::interval(BEAT);
    let tx = link.sender().clone();
    loop {
        tokio::select! {
            permit = tx.reserve(), if !pending.is_empty() => {
                let Ok(permit) = permit else { break };
                let Some(item) = pending.pop_front() else { continue };
                let is_event = matches!(item, Ok(Item::Event(_)));
                permit.send(item);
                if is_event {
                    granted += 1;
                    if granted >= threshold {
                        if !send(Back { credit: granted, ..Back::default() }).await {
                            break;
                        }
                        granted = 0;
                    }
                }
            }
            m = data.next() => {
                let Some(m) = m else { break };
                heard = Instant::now();
                let kind = m.headers.as_ref().and_then(|h| h.get(KIND)).map(|v| v.as_str().to_string());
                match kind.as_deref() {
                    Some("event") => {
                        let redeliveries = m
                            .headers
                            .as_ref()
                            .and_then(|h| h.get(REDELIVERIES))
                            .and_then(|v| v.as_str().parse().ok())
                            .unwrap_or(0);
                        match crate::relay::decode(m.headers.as_ref(), m.payload) {
                            Ok((_, event)) => pending.push_back(Ok(Item::Event(Delivery {
                                event: Arc::new(event),
                                redeliveries,
                            }))),
                            Err(why) => tracing::warn!(error = %why, "unreadable group delivery dropped"),
                        }
                    }
                    Some("notice") => {
                        if let Ok(n) = serde_json::from_slice::<Notice>(&m.payload) {
                            pending.push_back(Ok(Item::Notice(n)));
                        }
                    }
                    Some("end") => {
                        for item in pending.drain(..) {
                            if !link.send(item).await {
                                return;
                            }
                        }
                        // An error ends the member's stream; a plain end lets it join again.
                        if let Ok(w) = serde_json::from_slice::<WireError>(&m.payload) {
                            link.send(Err(w.into())).await;
                        }
                        return;
                    }
                    _ => {}
                }
            }
            c = link.recv() => match c {
                Some(LinkCtl::Ack(seq)) => {
                    let mut acks = vec![seq];
                    let mut leave = false;
                    while let Some(c) = link.try_recv() {
                        match c {
                            LinkCtl::Ack(s) => acks.push(s),
                            LinkCtl::Leave => leave = true,
                        }
                    }
                    let ok = send(Back { credit: std::mem::take(&mut granted), acks, leave }).await;
                    if !ok || leave {
                        return;
                    }
                }
                Some(LinkCtl::Leave) | None => break,
            },
            _ = beat.tick() => {
                if heard.elapsed() > DEAD {
                    tracing::info!(host = %back, "the node running a group went silent; joining it again");
                    return;
                }
                if !send(Back { credit: std::mem::take(&mut granted), ..Back::default() }).await {
                    return;
                }
            }
        }
    }
    let _ = send(Back {
        leave: true,
        ..Back::default()
    })
    .await;
}
