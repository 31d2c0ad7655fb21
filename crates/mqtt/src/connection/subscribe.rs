//! SUBSCRIBE and UNSUBSCRIBE: one Hub subscription per MQTT subscription (a group
//! for shared subscriptions and persistent sessions), retained messages, and the
//! forwarders that turn Hub deliveries into outgoing messages.

use crate::session::Map;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use futures::stream::BoxStream;
use polyport_core::subscription::Acker;
use polyport_core::{AckPolicy, Delivery, Item, Overflow, SubscribeRequest, TopicFilter};

use super::{End, NO_REDELIVERY, Outgoing, Session, Sub};
use crate::attrs;
use crate::broker::{now_ms, session_group};
use crate::error::Reason;
use crate::state::{self, SubSpec};
use crate::wire::{self, Ack, MsgProps, SubOpts};

impl Session {
    /// Resubscribes a resumed session and resends the PUBRELs it still owes.
    pub(super) async fn restore(&mut self, awaiting_comp: Vec<u16>) -> bool {
        for spec in self.saved.subs.clone() {
            match self.open_sub(&spec).await {
                Ok((_, sub)) => {
                    self.subs.insert(spec.filter.clone(), sub);
                }
                Err(e) => {
                    tracing::warn!(client = %self.client_id, filter = %spec.filter, error = %e, "restoring MQTT subscription failed");
                }
            }
        }
        for id in awaiting_comp {
            self.out.resume_comp(id);
            if !self.send_ack(Ack::Pubrel, id, None) {
                return false;
            }
        }
        true
    }

    /// Opens the Hub subscription behind one MQTT subscription and starts forwarding.
    /// Returns the filter (for retained messages, `None` for shared subscriptions).
    pub(super) async fn open_sub(
        &mut self,
        spec: &SubSpec,
    ) -> Result<(Option<TopicFilter>, Sub), u8> {
        let invalid = Reason::FilterInvalid.suback_code(self.ver);
        // `$share/{group}/{filter}`: competing consumers, a Hub group.
        let (share, filter_text) = match spec.filter.strip_prefix("$share/") {
            Some(rest) => match rest.split_once('/') {
                Some((g, f)) if !g.is_empty() && !g.contains(['+', '#']) => (Some(g), f),
                _ => return Err(invalid),
            },
            None => (None, spec.filter.as_str()),
        };
        let filter = TopicFilter::new(filter_text).map_err(|_| invalid)?;
        let ack = AckPolicy {
            prefetch: self.out.receive_max(),
            ack_timeout: NO_REDELIVERY,
        };
        let (group, ack) = match share {
            Some(g) => (Some(format!("mqtt-share:{g}")), Some(ack)),
            // A resumed session keeps reading from its saved positions even when this
            // CONNECT's expiry is 0 (that only decides what happens at the next
            // disconnect, [MQTT-3.1.2-5]): `persisted` says the groups exist.
            None if self.saved.expiry > 0 || self.persisted => (
                Some(session_group(
                    &self.client_id,
                    self.saved.generation(),
                    &spec.nonce,
                )),
                Some(ack),
            ),
            None => (None, None),
        };
        let req = SubscribeRequest {
            filters: vec![filter.clone()],
            adapter_managed: share.is_none(),
            group,
            ack,
            overflow: Overflow::Notify,
            queue: Some(self.broker.cfg.max_queued_messages),
            ..SubscribeRequest::default()
        };
        match self.broker.hub.subscribe(&self.ctx, req).await {
            Ok(sub) => {
                let settings = Arc::new(Settings::new(spec.opts(), spec.id));
                let stream = deliveries(
                    sub,
                    Forward {
                        settings: settings.clone(),
                        client_id: self.client_id.to_string(),
                        sent_before: self.out.sent_before(),
                    },
                );
                Ok((
                    share.is_none().then_some(filter),
                    self.add_deliveries(stream, settings),
                ))
            }
            Err(e) => {
                tracing::warn!(client = %self.client_id, error = %e, "MQTT subscribe refused by the hub");
                Err(Reason::from_hub(&e).suback_code(self.ver))
            }
        }
    }

    /// Writes the session to the Hub's adapter state when it is persistent.
    pub(super) async fn store_session(&mut self) -> bool {
        if self.saved.expiry == 0 {
            return true;
        }
        let value = state::encode_session(&self.saved, &self.broker.holder());
        match self
            .broker
            .hub
            .put_state(
                &self.broker.ctx,
                state::SESSIONS,
                &self.client_id,
                Some(value),
            )
            .await
        {
            Ok(()) => {
                self.persisted = true;
                true
            }
            Err(e) => {
                tracing::warn!(client = %self.client_id, error = %e, "storing MQTT session failed");
                false
            }
        }
    }

    pub(super) async fn on_subscribe(
        &mut self,
        pkid: u16,
        sub_id: Option<u32>,
        filters: Vec<(String, SubOpts)>,
    ) -> bool {
        let mut codes = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        let mut changed = false;
        for (text, mut opts) in filters {
            opts.qos = opts.qos.min(2);
            // A replaced subscription keeps its stream; a new one starts live.
            let nonce = self
                .saved
                .subs
                .iter()
                .find(|s| s.filter == text)
                .map(|s| s.nonce.clone())
                .unwrap_or_else(polyport_core::record::new_id);
            let spec = SubSpec::new(text.clone(), opts, sub_id, nonce);
            let is_new = !self.subs.contains_key(&text);
            if is_new && self.subs.len() >= self.broker.cfg.max_subscriptions {
                tracing::info!(client = %self.client_id, filter = %text, "MQTT subscription refused: subscription limit");
                polyport_core::admission::limit_hit("mqtt.max_subscriptions");
                codes.push(Reason::QuotaExceeded.suback_code(self.ver));
                continue;
            }
            // The same filter again replaces the options in place: the flow MUST NOT be
            // interrupted [MQTT-3.8.4-3], and a reopened Hub subscription would see a message
            // still held by the old one redelivered after newer ones.
            let opened = match self.subs.get(&text) {
                Some(sub) => {
                    sub.settings.set(spec.opts(), sub_id);
                    Ok(plain_filter(&text))
                }
                None => self.open_sub(&spec).await.map(|(filter, sub)| {
                    self.subs.insert(text.clone(), sub);
                    filter
                }),
            };
            match opened {
                Ok(filter) => {
                    self.saved.subs.retain(|s| s.filter != text);
                    self.saved.subs.push(spec);
                    changed = true;
                    codes.push(opts.qos);
                    let send_retained =
                        opts.retain_handling == 0 || (opts.retain_handling == 1 && is_new);
                    if let (Some(filter), true) = (filter, send_retained) {
                        for (topic, r) in self.broker.retained_for(&filter) {
                            let message_expiry = r
                                .expires_at
                                .map(|at| (at.saturating_sub(now_ms())).div_ceil(1000) as u32);
                            let Ok(topic) = polyport_core::Topic::new(&topic) else {
                                continue;
                            };
                            retained.push(Outgoing {
                                topic,
                                payload: r.payload,
                                qos: r.qos.min(opts.qos),
                                retain: true,
                                props: MsgProps {
                                    message_expiry,
                                    ..r.props
                                },
                                sub_ids: sub_id.into_iter().collect(),
                                dup: false,
                                ack: None,
                            });
                        }
                    }
                }
                Err(code) => codes.push(code),
            }
        }
        // A persistent session's subscriptions are stored before SUBACK promises them.
        if changed && !self.store_session().await {
            for c in &mut codes {
                if *c <= 2 {
                    *c = Reason::Unspecified.suback_code(self.ver);
                }
            }
        }
        let Some(ack) = wire::suback(self.ver, pkid, &codes) else {
            return true;
        };
        if !self.send(ack) {
            return false;
        }
        // Through the backlog, so the client's receive maximum holds for them too.
        if !retained.is_empty() {
            self.backlog.get_or_insert_default().extend(retained);
        }
        true
    }
    /// UNSUBSCRIBE: ends the forwarders, forgets the session's groups, UNSUBACK.
    pub(super) async fn on_unsubscribe(&mut self, pkid: u16, filters: Vec<String>) -> Option<End> {
        let found: Vec<bool> = filters
            .iter()
            .map(|f| match self.subs.remove(f) {
                Some(s) => {
                    s.abort.abort();
                    true
                }
                None => false,
            })
            .collect();
        if found.iter().any(|f| *f) {
            let (gone, kept) = std::mem::take(&mut self.saved.subs)
                .into_iter()
                .partition(|s| filters.contains(&s.filter));
            self.saved.subs = kept;
            let gone: Vec<SubSpec> = gone;
            if self.saved.expiry > 0 || self.persisted {
                for g in &gone {
                    let name = session_group(&self.client_id, &self.saved.generation, &g.nonce);
                    let _ = Box::pin(self.broker.hub.delete_group(&self.broker.ctx, &name)).await;
                }
            }
            if !Box::pin(self.store_session()).await {
                self.disconnect(Reason::ServerBusy).await;
                return Some(End::Abnormal);
            }
        }
        if let Some(p) = wire::unsuback(self.ver, pkid, &found)
            && !self.send(p)
        {
            return Some(End::Abnormal);
        }
        None
    }
}

/// The filter whose retained messages a subscription gets (none for a shared one).
fn plain_filter(text: &str) -> Option<TopicFilter> {
    match text.starts_with("$share/") {
        true => None,
        false => TopicFilter::new(text).ok(),
    }
}

/// One subscription's options as its forwarder reads them for each message, in one
/// atomic word so a repeated SUBSCRIBE can change them under the running stream.
pub(super) struct Settings(AtomicU64);

impl Settings {
    const NO_LOCAL: u64 = 1 << 2;
    const RETAIN_AS_PUBLISHED: u64 = 1 << 3;
    const HAS_ID: u64 = 1 << 8;

    fn new(opts: SubOpts, sub_id: Option<u32>) -> Self {
        Self(AtomicU64::new(Self::pack(opts, sub_id)))
    }

    fn set(&self, opts: SubOpts, sub_id: Option<u32>) {
        self.0.store(Self::pack(opts, sub_id), Ordering::Relaxed);
    }

    fn pack(opts: SubOpts, sub_id: Option<u32>) -> u64 {
        let mut w = u64::from(opts.qos & 3) | u64::from(opts.retain_handling & 3) << 4;
        if opts.no_local {
            w |= Self::NO_LOCAL;
        }
        if opts.retain_as_published {
            w |= Self::RETAIN_AS_PUBLISHED;
        }
        if let Some(id) = sub_id {
            w |= Self::HAS_ID | u64::from(id) << 32;
        }
        w
    }

    fn get(&self) -> (SubOpts, Option<u32>) {
        let w = self.0.load(Ordering::Relaxed);
        let opts = SubOpts {
            qos: (w & 3) as u8,
            no_local: w & Self::NO_LOCAL != 0,
            retain_as_published: w & Self::RETAIN_AS_PUBLISHED != 0,
            retain_handling: (w >> 4 & 3) as u8,
        };
        (opts, (w & Self::HAS_ID != 0).then_some((w >> 32) as u32))
    }
}

/// What turns one subscription's deliveries into MQTT messages for this session.
struct Forward {
    settings: Arc<Settings>,
    client_id: String,
    sent_before: Arc<Map<u64, u16>>,
}

/// One Hub subscription as a stream of outgoing MQTT messages for this session.
fn deliveries(sub: polyport_core::Subscription, f: Forward) -> BoxStream<'static, Outgoing> {
    let acker = sub.acker();
    futures::stream::unfold((sub, f, acker), |(mut sub, f, acker)| async move {
        loop {
            match sub.next().await? {
                Ok(Item::Event(d)) => {
                    if let Some(out) = f.outgoing(&d, &acker) {
                        return Some((out, (sub, f, acker)));
                    }
                }
                Ok(Item::Notice(n)) => {
                    tracing::debug!(client = %f.client_id, notice = ?n, "MQTT subscriber missed messages");
                }
                Err(_) => return None,
            }
        }
    })
    .boxed()
}

impl Forward {
    /// The message for this subscriber, or `None` when it does not get one (no-local,
    /// expired while queued): then it is acknowledged at once.
    fn outgoing(&self, d: &Delivery, acker: &Acker) -> Option<Outgoing> {
        let e = &d.event;
        let (opts, sub_id) = self.settings.get();
        let ack = e.seq.map(|seq| (acker.clone(), seq));
        let settle = |ack: Option<(Acker, u64)>| {
            if let Some((a, seq)) = ack {
                a.ack(seq);
            }
        };
        if opts.no_local && attrs::from_client(e, &self.client_id) {
            settle(ack);
            return None;
        }
        let Some(out) = attrs::outbound(e, chrono::Utc::now) else {
            // Expired while queued (MQTT 5 message expiry).
            settle(ack);
            return None;
        };
        let qos = out.published_qos.min(opts.qos);
        let mut out = Outgoing {
            topic: e.topic.clone(),
            payload: e.payload.clone(),
            qos,
            retain: opts.retain_as_published && out.retain,
            props: out.props,
            sub_ids: sub_id.into_iter().collect(),
            dup: qos > 0
                && (d.redeliveries > 0 || e.seq.is_some_and(|s| self.sent_before.contains_key(&s))),
            ack,
        };
        if qos == 0 {
            // At most once: nothing to wait for.
            out.settle();
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::{Settings, SubOpts};

    #[test]
    fn settings_keep_every_option_and_the_subscription_id() {
        let cases = [
            (SubOpts::default(), None),
            (
                SubOpts {
                    qos: 2,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: 2,
                },
                Some(268_435_455),
            ),
            (
                SubOpts {
                    qos: 1,
                    no_local: false,
                    retain_as_published: true,
                    retain_handling: 1,
                },
                Some(1),
            ),
        ];
        let s = Settings::new(SubOpts::default(), Some(7));
        for (opts, id) in cases {
            s.set(opts, id);
            assert_eq!(s.get(), (opts, id));
        }
    }
}
