//! The MQTT session's bookkeeping without I/O: packet ids and the outbound in-flight
//! window, topic aliases both ways, the inbound QoS 1/2 flows and Receive Maximum,
//! keep-alive and will timing. The connection task asks these for decisions and does
//! the reading and writing; everything here is tested without a runtime or a socket.
//!
//! `A` is what an outbound message owes its Hub group once the client has it (an
//! `Acker` in the broker, anything in tests).

use std::sync::Arc;
use std::time::Duration;

/// The maps every connection carries (packet ids, sequences, topic aliases): FxHash,
/// whose hasher has no per-map state, where std's `RandomState` adds 16 bytes to each
/// map of every idle connection. Their keys are bounded by the protocol (packet ids,
/// receive maximum, alias maximum), so a skewed hash cannot grow them.
pub(crate) type Map<K, V> = rustc_hash::FxHashMap<K, V>;
/// See [`Map`].
pub(crate) type Set<K> = rustc_hash::FxHashSet<K>;

static NOTHING_SENT_BEFORE: std::sync::LazyLock<Arc<Map<u64, u16>>> =
    std::sync::LazyLock::new(Default::default);

use crate::error::Reason;
use crate::wire::{Ack, MsgProps, Ver};

/// What an outbound QoS 1/2 message waits for next.
#[derive(Debug, PartialEq)]
pub(crate) enum OutState<A> {
    /// PUBACK (QoS 1), then the group acknowledgement.
    Ack(Option<A>),
    /// PUBREC (QoS 2), then the group acknowledgement.
    Rec(Option<A>),
    /// PUBCOMP: the client has the message, only the id handshake remains.
    Comp,
}

/// How to send one outbound message.
#[derive(Debug, PartialEq)]
pub(crate) enum Plan {
    /// Larger than the client (or we) allow: discard it as if delivered.
    TooLarge { size: usize, limit: usize },
    /// Send it with this packet id (QoS 1/2), with the topic left out when the alias
    /// already names it.
    Send { id: Option<u16>, elide_topic: bool },
}

/// What [`Outbound::plan`] needs to know of a message.
pub(crate) struct Message<'a> {
    pub(crate) topic: &'a str,
    pub(crate) payload_len: usize,
    pub(crate) qos: u8,
    pub(crate) sub_ids: &'a [u32],
    /// Its event sequence, if durable (a resend keeps its packet id).
    pub(crate) seq: Option<u64>,
}

/// The outbound half: what we sent the client and have not had acknowledged.
pub(crate) struct Outbound<A> {
    ver: Ver,
    /// `None` until the first QoS 1/2 message or alias: a connection that only gets
    /// QoS 0 messages (or none) carries 8 bytes here, not three empty maps.
    flows: Option<Box<OutFlows<A>>>,
    next_pkid: u16,
    /// Sequences an earlier connection of this session sent without an acknowledgement,
    /// with the packet id used: sent again they keep the id (MQTT 4.4).
    sent_before: Arc<Map<u64, u16>>,
    alias_max: u16,
    receive_max: usize,
    max_packet: usize,
}

struct OutFlows<A> {
    inflight: Map<u16, OutState<A>>,
    /// Ids of `sent_before` not sent again yet: never handed to new messages.
    reserved: Set<u16>,
    aliases: Map<String, u16>,
}

impl<A> Default for OutFlows<A> {
    fn default() -> Self {
        Self {
            inflight: Map::default(),
            reserved: Set::default(),
            aliases: Map::default(),
        }
    }
}

/// What a session parks for its next connection.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ParkedOut {
    pub(crate) awaiting_comp: Vec<u16>,
    pub(crate) unacked: Map<u64, u16>,
    pub(crate) reserved: Set<u16>,
}

impl<A> Outbound<A> {
    /// `receive_max`, `alias_max`, `max_packet`: the client's CONNECT, with our own
    /// packet limit folded into `max_packet`.
    pub(crate) fn new(
        ver: Ver,
        receive_max: u16,
        alias_max: u16,
        max_packet: u32,
        sent_before: Map<u64, u16>,
        reserved: Set<u16>,
    ) -> Self {
        Self {
            ver,
            flows: (!reserved.is_empty()).then(|| {
                Box::new(OutFlows {
                    reserved,
                    ..OutFlows::default()
                })
            }),
            next_pkid: 0,
            sent_before: match sent_before.is_empty() {
                // Most connections resume nothing: they share one empty map.
                true => NOTHING_SENT_BEFORE.clone(),
                false => Arc::new(sent_before),
            },
            alias_max: if ver == Ver::V5 { alias_max } else { 0 },
            receive_max: usize::from(receive_max.max(1)),
            max_packet: max_packet as usize,
        }
    }

    /// Shared with the forwarders, which set DUP on what was sent before.
    pub(crate) fn sent_before(&self) -> Arc<Map<u64, u16>> {
        self.sent_before.clone()
    }

    pub(crate) fn receive_max(&self) -> usize {
        self.receive_max
    }

    /// Whether the client's Receive Maximum leaves room for another QoS 1/2 message.
    pub(crate) fn has_room(&self) -> bool {
        self.in_flight() < self.receive_max
    }

    fn in_flight(&self) -> usize {
        self.flows.as_ref().map_or(0, |f| f.inflight.len())
    }

    fn flows_mut(&mut self) -> &mut OutFlows<A> {
        self.flows.get_or_insert_with(Default::default)
    }

    /// Decides how to send a message (alias, size, packet id) and, unless it is too
    /// large, commits it: the alias becomes known and a QoS 1/2 message is in flight
    /// holding `ack`. A dropped message leaves no alias behind that later ones would
    /// rely on.
    pub(crate) fn plan(
        &mut self,
        m: Message<'_>,
        props: &mut MsgProps,
        ack: Option<A>,
    ) -> (Plan, Option<A>) {
        let Message {
            topic,
            payload_len,
            qos,
            sub_ids,
            seq,
        } = m;
        let aliases = self.flows.as_ref().map(|f| &f.aliases);
        let known = aliases.map_or(0, |a| a.len());
        let (alias, new_alias) = match aliases.and_then(|a| a.get(topic)) {
            Some(a) => (Some(*a), false),
            None if known < usize::from(self.alias_max) => (Some(known as u16 + 1), true),
            None => (None, false),
        };
        props.topic_alias = alias;
        let elide_topic = alias.is_some() && !new_alias;
        let wire_topic = if elide_topic { "" } else { topic };
        let size =
            crate::wire::publish_size(self.ver, wire_topic, payload_len, qos, props, sub_ids);
        if size > self.max_packet {
            props.topic_alias = None;
            let limit = self.max_packet;
            return (Plan::TooLarge { size, limit }, ack);
        }
        if let (Some(a), true) = (alias, new_alias) {
            self.flows_mut().aliases.insert(topic.to_string(), a);
        }
        let id = (qos > 0).then(|| self.pkid(seq));
        if let Some(id) = id {
            let st = if qos == 1 {
                OutState::Ack(ack)
            } else {
                OutState::Rec(ack)
            };
            self.flows_mut().inflight.insert(id, st);
            return (
                Plan::Send {
                    id: Some(id),
                    elide_topic,
                },
                None,
            );
        }
        (Plan::Send { id, elide_topic }, ack)
    }

    /// A packet id for `seq`: the one it had on an earlier connection if any, else a
    /// free one (not in flight, not reserved for such a resend).
    fn pkid(&mut self, seq: Option<u64>) -> u16 {
        let f = self.flows.get_or_insert_with(Default::default);
        if let Some(id) = seq.and_then(|s| self.sent_before.get(&s).copied())
            && f.reserved.remove(&id)
            && !f.inflight.contains_key(&id)
        {
            return id;
        }
        for _ in 0..=u16::MAX {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            let id = self.next_pkid;
            if id != 0 && !f.inflight.contains_key(&id) && !f.reserved.contains(&id) {
                return id;
            }
        }
        // Every id is in flight or reserved: give up the reservations (those messages
        // will be sent with new ids) rather than spin.
        f.reserved.clear();
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid != 0 && !f.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// PUBACK: the group acknowledgement now owed, if the id was a QoS 1 message.
    pub(crate) fn puback(&mut self, id: u16) -> Option<A> {
        let inflight = &mut self.flows.as_mut()?.inflight;
        match inflight.remove(&id) {
            Some(OutState::Ack(ack)) => ack,
            Some(other) => {
                inflight.insert(id, other);
                None
            }
            None => None,
        }
    }

    /// PUBREC: `Ok(ack owed)` for a known QoS 2 message (now awaiting PUBCOMP), or
    /// `Err` with the reason for the PUBREL.
    pub(crate) fn pubrec(&mut self, id: u16) -> Result<Option<A>, Reason> {
        let Some(f) = self.flows.as_mut() else {
            return Err(Reason::PacketIdNotFound);
        };
        match f.inflight.remove(&id) {
            Some(OutState::Rec(ack)) => {
                f.inflight.insert(id, OutState::Comp);
                Ok(ack)
            }
            Some(other) => {
                f.inflight.insert(id, other);
                Err(Reason::PacketIdNotFound)
            }
            None => Err(Reason::PacketIdNotFound),
        }
    }

    /// PUBCOMP ends a QoS 2 flow.
    pub(crate) fn pubcomp(&mut self, id: u16) {
        if let Some(f) = self.flows.as_mut()
            && matches!(f.inflight.get(&id), Some(OutState::Comp))
        {
            f.inflight.remove(&id);
        }
    }

    /// A resumed session owes these PUBRELs.
    pub(crate) fn resume_comp(&mut self, id: u16) {
        self.flows_mut().inflight.insert(id, OutState::Comp);
    }
}

impl<A> Outbound<(A, u64)> {
    /// What the next connection of this session needs: PUBRELs to resend, sequences sent
    /// unacknowledged (resent with DUP and the same id), and every id the client may
    /// still hold — overlapping subscriptions can send one event under two ids, retained
    /// messages have no sequence — kept free until resent or released.
    pub(crate) fn park(&self, max_remembered: usize) -> ParkedOut {
        let mut out = ParkedOut::default();
        let Some(f) = self.flows.as_ref() else {
            return out;
        };
        for (id, st) in &f.inflight {
            match st {
                OutState::Comp => out.awaiting_comp.push(*id),
                OutState::Ack(a) | OutState::Rec(a) => {
                    out.reserved.insert(*id);
                    if let Some((_, seq)) = a
                        && out.unacked.len() < max_remembered
                    {
                        out.unacked.insert(*seq, *id);
                    }
                }
            }
        }
        out
    }
}

/// What to do with an inbound QoS 1/2 PUBLISH.
#[derive(Debug, PartialEq)]
pub(crate) enum Admit {
    /// New: publish it, then send this acknowledgement.
    Publish(Ack),
    /// A resend of one still being stored: its acknowledgement follows.
    Wait,
    /// A resend of a QoS 2 message already stored: acknowledge again, never publish twice.
    AckAgain(Ack),
}

/// The inbound half: aliases the client set, and its unfinished QoS 1/2 publishes.
pub(crate) struct Inbound {
    ver: Ver,
    alias_max: u16,
    receive_max: usize,
    /// `None` until the client first sets an alias or publishes at QoS 1/2.
    flows: Option<Box<InFlows>>,
}

#[derive(Default)]
struct InFlows {
    aliases: Map<u16, String>,
    /// QoS 2 ids between PUBLISH and PUBREL.
    awaiting_rel: Set<u16>,
    /// QoS 2 ids whose publish is still on its way to the log.
    publishing: Set<u16>,
    /// QoS 1 ids whose publish is still on its way to the log.
    acking: Set<u16>,
}

impl Inbound {
    /// Our limits, as told in CONNACK; `awaiting_rel` from a resumed session.
    pub(crate) fn new(ver: Ver, receive_max: u16, alias_max: u16, awaiting_rel: Set<u16>) -> Self {
        Self {
            ver,
            alias_max,
            receive_max: usize::from(receive_max),
            flows: (!awaiting_rel.is_empty()).then(|| {
                Box::new(InFlows {
                    awaiting_rel,
                    ..InFlows::default()
                })
            }),
        }
    }

    fn flows_mut(&mut self) -> &mut InFlows {
        self.flows.get_or_insert_with(Default::default)
    }

    /// Applies a PUBLISH's topic alias: an empty topic is looked up, a named one
    /// (re)defines the alias.
    pub(crate) fn resolve_alias(
        &mut self,
        alias: Option<u16>,
        topic: &mut String,
    ) -> Result<(), Reason> {
        let Some(alias) = alias else {
            return Ok(());
        };
        if alias == 0 || alias > self.alias_max {
            return Err(Reason::AliasOutOfRange);
        }
        if topic.is_empty() {
            match self.flows.as_ref().and_then(|f| f.aliases.get(&alias)) {
                Some(t) => topic.clone_from(t),
                None => return Err(Reason::AliasUnknown),
            }
        } else {
            self.flows_mut().aliases.insert(alias, topic.clone());
        }
        Ok(())
    }

    /// QoS 1/2 publishes not finished: QoS 1 until its PUBACK is sent, QoS 2 until its
    /// PUBREL arrives.
    pub(crate) fn in_flight(&self) -> usize {
        self.flows
            .as_ref()
            .map_or(0, |f| f.acking.len() + f.awaiting_rel.len())
    }

    /// Admits a QoS 1/2 PUBLISH. MQTT 5 §4.9: a client may have at most Receive
    /// Maximum unacknowledged; the connection keeps reading while it is full, so the
    /// violation is seen rather than hidden by back-pressure.
    pub(crate) fn admit(&mut self, qos: u8, id: u16) -> Result<Admit, Reason> {
        if let Some(f) = self.flows.as_ref() {
            if qos == 2 && f.awaiting_rel.contains(&id) {
                return Ok(match f.publishing.contains(&id) {
                    true => Admit::Wait,
                    false => Admit::AckAgain(Ack::Pubrec),
                });
            }
            if qos == 1 && f.acking.contains(&id) {
                return Ok(Admit::Wait);
            }
        }
        if self.ver == Ver::V5 && self.in_flight() >= self.receive_max {
            return Err(Reason::ReceiveMaxExceeded);
        }
        let f = self.flows_mut();
        if qos == 2 {
            f.awaiting_rel.insert(id);
            f.publishing.insert(id);
            Ok(Admit::Publish(Ack::Pubrec))
        } else {
            f.acking.insert(id);
            Ok(Admit::Publish(Ack::Puback))
        }
    }

    /// A refused QoS 2 PUBLISH that is acknowledged (3.1.1 `$SYS`): awaits its PUBREL.
    pub(crate) fn expect_rel(&mut self, id: u16) {
        self.flows_mut().awaiting_rel.insert(id);
    }

    /// The Hub has finished with a publish; a failed QoS 2 one ends its flow, so the id
    /// is free for a new message (and a retransmission is published).
    pub(crate) fn stored(&mut self, kind: Ack, id: u16, ok: bool) {
        let Some(f) = self.flows.as_mut() else {
            return;
        };
        match kind {
            Ack::Pubrec => {
                f.publishing.remove(&id);
                if !ok {
                    f.awaiting_rel.remove(&id);
                }
            }
            _ => {
                f.acking.remove(&id);
            }
        }
    }

    /// PUBREL: `Err` with the PUBCOMP's reason when the id is unknown.
    pub(crate) fn pubrel(&mut self, id: u16) -> Result<(), Reason> {
        match self
            .flows
            .as_mut()
            .is_some_and(|f| f.awaiting_rel.remove(&id))
        {
            true => Ok(()),
            false => Err(Reason::PacketIdNotFound),
        }
    }

    /// For parking: QoS 2 ids whose PUBREL has not arrived.
    pub(crate) fn take_awaiting_rel(&mut self) -> Set<u16> {
        self.flows
            .as_mut()
            .map(|f| std::mem::take(&mut f.awaiting_rel))
            .unwrap_or_default()
    }
}

/// How long the connection may stay silent: one and a half keep-alives (MQTT 3.1.2.10).
pub(crate) fn keep_alive_window(keep_alive: u16) -> Option<Duration> {
    (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500))
}

/// When the will goes out after an abnormal end: its delay or the session's end,
/// whichever comes first (MQTT 5 3.1.3.2.2).
pub(crate) fn will_delay(delay_secs: u32, session_expiry_secs: u32) -> Duration {
    Duration::from_secs(u64::from(delay_secs.min(session_expiry_secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(receive_max: u16, alias_max: u16, max_packet: u32) -> Outbound<(char, u64)> {
        Outbound::new(
            Ver::V5,
            receive_max,
            alias_max,
            max_packet,
            Map::default(),
            Set::default(),
        )
    }

    fn msg(topic: &str, payload_len: usize, qos: u8, seq: Option<u64>) -> Message<'_> {
        Message {
            topic,
            payload_len,
            qos,
            sub_ids: &[],
            seq,
        }
    }

    fn send(o: &mut Outbound<(char, u64)>, topic: &str, qos: u8, seq: u64) -> (Plan, Option<u16>) {
        let mut props = MsgProps::default();
        let (plan, _) = o.plan(msg(topic, 10, qos, Some(seq)), &mut props, Some(('a', seq)));
        (plan, props.topic_alias)
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_never_zero() {
        let mut o = out(10, 0, 1 << 20);
        let (a, _) = send(&mut o, "t", 1, 1);
        let (b, _) = send(&mut o, "t", 2, 2);
        assert_eq!(
            a,
            Plan::Send {
                id: Some(1),
                elide_topic: false
            }
        );
        assert_eq!(
            b,
            Plan::Send {
                id: Some(2),
                elide_topic: false
            }
        );
        o.next_pkid = u16::MAX - 1;
        let (c, _) = send(&mut o, "t", 1, 3);
        let (d, _) = send(&mut o, "t", 1, 4);
        assert_eq!(
            c,
            Plan::Send {
                id: Some(u16::MAX),
                elide_topic: false
            }
        );
        assert_eq!(
            d,
            Plan::Send {
                id: Some(3),
                elide_topic: false
            },
            "wraps past 0, 1 and 2"
        );
    }

    #[test]
    fn the_receive_maximum_bounds_the_window_and_acks_open_it() {
        let mut o = out(2, 0, 1 << 20);
        send(&mut o, "t", 1, 1);
        assert!(o.has_room());
        send(&mut o, "t", 2, 2);
        assert!(!o.has_room());
        assert_eq!(o.puback(2), None, "PUBACK for a QoS 2 id is not its ack");
        assert!(!o.has_room());
        assert_eq!(o.puback(1), Some(('a', 1)));
        assert!(o.has_room());
        send(&mut o, "t", 1, 3);
        assert_eq!(o.pubrec(2), Ok(Some(('a', 2))));
        assert!(!o.has_room(), "awaiting PUBCOMP still counts");
        assert_eq!(o.pubrec(2), Err(Reason::PacketIdNotFound));
        o.pubcomp(2);
        assert!(o.has_room());
        assert_eq!(o.pubrec(9), Err(Reason::PacketIdNotFound));
    }

    #[test]
    fn a_resend_keeps_its_earlier_packet_id_and_others_avoid_it() {
        let mut o: Outbound<(char, u64)> = Outbound::new(
            Ver::V5,
            10,
            0,
            1 << 20,
            Map::from_iter([(7, 1)]),
            Set::from_iter([1]),
        );
        let (fresh, _) = send(&mut o, "t", 1, 8);
        assert_eq!(
            fresh,
            Plan::Send {
                id: Some(2),
                elide_topic: false
            },
            "1 is reserved"
        );
        let (again, _) = send(&mut o, "t", 1, 7);
        assert_eq!(
            again,
            Plan::Send {
                id: Some(1),
                elide_topic: false
            }
        );
    }

    #[test]
    fn aliases_are_assigned_up_to_the_clients_maximum_and_then_elide_the_topic() {
        let mut o = out(10, 1, 1 << 20);
        assert_eq!(
            send(&mut o, "a", 0, 1),
            (
                Plan::Send {
                    id: None,
                    elide_topic: false
                },
                Some(1)
            )
        );
        assert_eq!(
            send(&mut o, "a", 0, 2),
            (
                Plan::Send {
                    id: None,
                    elide_topic: true
                },
                Some(1)
            )
        );
        assert_eq!(
            send(&mut o, "b", 0, 3),
            (
                Plan::Send {
                    id: None,
                    elide_topic: false
                },
                None
            ),
            "no alias left"
        );
        let mut v3: Outbound<(char, u64)> =
            Outbound::new(Ver::V3, 10, 5, 1 << 20, Map::default(), Set::default());
        assert_eq!(send(&mut v3, "a", 0, 1).1, None, "3.1.1 has no aliases");
    }

    #[test]
    fn an_oversized_message_is_dropped_without_committing_its_alias_or_an_id() {
        // A 64-byte limit: the 10-byte payload fits under a short topic only.
        let mut o = out(10, 5, 64);
        let long = "x".repeat(60);
        let mut props = MsgProps::default();
        let (plan, ack) = o.plan(msg(&long, 10, 1, Some(1)), &mut props, Some(('a', 1)));
        assert!(matches!(plan, Plan::TooLarge { limit: 64, .. }), "{plan:?}");
        assert_eq!(ack, Some(('a', 1)), "handed back to be settled");
        assert!(o.has_room() && o.in_flight() == 0);
        assert_eq!(props.topic_alias, None);
        assert_eq!(send(&mut o, "short", 1, 2).1, Some(1), "alias 1 still free");
    }

    #[test]
    fn parking_keeps_what_the_next_connection_needs() {
        let mut o = out(10, 0, 1 << 20);
        send(&mut o, "t", 1, 10);
        send(&mut o, "t", 2, 11);
        send(&mut o, "t", 2, 12);
        o.pubrec(3).unwrap();
        let mut props = MsgProps::default();
        o.plan(msg("t", 1, 1, None), &mut props, None); // retained: no sequence
        let p = o.park(100);
        assert_eq!(p.awaiting_comp, vec![3]);
        assert_eq!(p.unacked, Map::from_iter([(10, 1), (11, 2)]));
        assert_eq!(p.reserved, Set::from_iter([1, 2, 4]));
        assert_eq!(o.park(1).unacked.len(), 1, "bounded");
    }

    #[test]
    fn inbound_aliases() {
        let mut i = Inbound::new(Ver::V5, 10, 2, Set::default());
        let mut t = String::from("a/b");
        i.resolve_alias(Some(1), &mut t).unwrap();
        let mut empty = String::new();
        i.resolve_alias(Some(1), &mut empty).unwrap();
        assert_eq!(empty, "a/b");
        assert_eq!(
            i.resolve_alias(Some(2), &mut String::new()),
            Err(Reason::AliasUnknown)
        );
        assert_eq!(
            i.resolve_alias(Some(3), &mut t),
            Err(Reason::AliasOutOfRange)
        );
        assert_eq!(
            i.resolve_alias(Some(0), &mut t),
            Err(Reason::AliasOutOfRange)
        );
    }

    #[test]
    fn qos2_is_published_once_and_counts_until_pubrel() {
        let mut i = Inbound::new(Ver::V5, 2, 0, Set::default());
        assert_eq!(i.admit(2, 5), Ok(Admit::Publish(Ack::Pubrec)));
        assert_eq!(i.admit(2, 5), Ok(Admit::Wait), "still being stored");
        i.stored(Ack::Pubrec, 5, true);
        assert_eq!(i.admit(2, 5), Ok(Admit::AckAgain(Ack::Pubrec)));
        assert_eq!(i.in_flight(), 1);
        assert_eq!(i.pubrel(5), Ok(()));
        assert_eq!(i.pubrel(5), Err(Reason::PacketIdNotFound));
        assert_eq!(i.in_flight(), 0);
        // A failed store frees the id: a retransmission is published.
        assert_eq!(i.admit(2, 6), Ok(Admit::Publish(Ack::Pubrec)));
        i.stored(Ack::Pubrec, 6, false);
        assert_eq!(i.admit(2, 6), Ok(Admit::Publish(Ack::Pubrec)));
    }

    #[test]
    fn the_receive_maximum_is_enforced_on_mqtt5_only() {
        let mut i = Inbound::new(Ver::V5, 2, 0, Set::default());
        assert_eq!(i.admit(1, 1), Ok(Admit::Publish(Ack::Puback)));
        assert_eq!(i.admit(2, 2), Ok(Admit::Publish(Ack::Pubrec)));
        assert_eq!(i.admit(1, 1), Ok(Admit::Wait), "a resend does not count");
        assert_eq!(i.admit(1, 3), Err(Reason::ReceiveMaxExceeded));
        i.stored(Ack::Puback, 1, true);
        assert_eq!(i.admit(1, 3), Ok(Admit::Publish(Ack::Puback)));
        let mut v3 = Inbound::new(Ver::V3, 1, 0, Set::default());
        v3.admit(1, 1).unwrap();
        assert_eq!(v3.admit(1, 2), Ok(Admit::Publish(Ack::Puback)));
    }

    #[test]
    fn timing() {
        assert_eq!(keep_alive_window(0), None);
        assert_eq!(keep_alive_window(10), Some(Duration::from_secs(15)));
        assert_eq!(will_delay(30, 10), Duration::from_secs(10));
        assert_eq!(will_delay(5, 10), Duration::from_secs(5));
        assert_eq!(will_delay(5, 0), Duration::ZERO);
    }
}
