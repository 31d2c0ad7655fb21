//! The only place that knows rmqtt-codec's v3 and v5 packet types: inbound packets are
//! normalised into [`In`], outbound ones built from version-neutral arguments, so the
//! session logic is written once for both protocol versions.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::Bytes;
use bytestring::ByteString;
use rmqtt_codec::types::QoS;
use rmqtt_codec::{MqttPacket, v3, v5};

/// Protocol version of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ver {
    V3,
    V5,
}

/// MQTT 5 properties that travel with a message (empty on 3.1.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MsgProps {
    pub(crate) content_type: Option<String>,
    pub(crate) response_topic: Option<String>,
    pub(crate) correlation_data: Option<Bytes>,
    pub(crate) user_properties: Vec<(String, String)>,
    pub(crate) payload_is_utf8: bool,
    pub(crate) topic_alias: Option<u16>,
    /// Seconds the message stays deliverable (MQTT 5 message expiry interval).
    pub(crate) message_expiry: Option<u32>,
}

/// An inbound PUBLISH.
#[derive(Debug)]
pub(crate) struct PublishIn {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) qos: u8,
    pub(crate) retain: bool,
    pub(crate) pkid: Option<u16>,
    pub(crate) props: MsgProps,
}

/// Subscription options (3.1.1 has only the QoS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SubOpts {
    pub(crate) qos: u8,
    pub(crate) no_local: bool,
    pub(crate) retain_as_published: bool,
    /// 0 send retained at subscribe, 1 only for a new subscription, 2 never.
    pub(crate) retain_handling: u8,
}

/// What the session reacts to.
#[derive(Debug)]
pub(crate) enum In {
    Publish(Box<PublishIn>),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        pkid: u16,
        sub_id: Option<u32>,
        filters: Vec<(String, SubOpts)>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    Ping,
    /// `with_will`: MQTT 5's "disconnect with will message"; `session_expiry`: a new
    /// session expiry interval.
    Disconnect {
        with_will: bool,
        session_expiry: Option<u32>,
    },
    /// A packet a client must not send (CONNECT twice, CONNACK, …).
    Unexpected(&'static str),
}

fn qos_u8(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

pub(crate) fn qos_of(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn user_props(p: v5::UserProperties) -> Vec<(String, String)> {
    p.into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn publish_in(p: rmqtt_codec::types::Publish) -> PublishIn {
    let props = p
        .properties
        .map(|pp| MsgProps {
            content_type: pp.content_type.map(|s| s.to_string()),
            response_topic: pp.response_topic.map(|s| s.to_string()),
            correlation_data: pp.correlation_data,
            user_properties: user_props(pp.user_properties),
            payload_is_utf8: pp.is_utf8_payload,
            topic_alias: pp.topic_alias.map(NonZeroU16::get),
            message_expiry: pp.message_expiry_interval.map(NonZeroU32::get),
        })
        .unwrap_or_default();
    PublishIn {
        topic: p.topic.to_string(),
        payload: p.payload,
        qos: qos_u8(p.qos),
        retain: p.retain,
        pkid: p.packet_id.map(NonZeroU16::get),
        props,
    }
}

/// Normalises a decoded packet.
pub(crate) fn inbound(p: MqttPacket) -> In {
    match p {
        MqttPacket::V3(p) => match p {
            v3::Packet::Publish(p) => In::Publish(Box::new(publish_in(*p))),
            v3::Packet::PublishAck { packet_id } => In::PubAck(packet_id.get()),
            v3::Packet::PublishReceived { packet_id } => In::PubRec(packet_id.get()),
            v3::Packet::PublishRelease { packet_id } => In::PubRel(packet_id.get()),
            v3::Packet::PublishComplete { packet_id } => In::PubComp(packet_id.get()),
            v3::Packet::Subscribe {
                packet_id,
                topic_filters,
            } => In::Subscribe {
                pkid: packet_id.get(),
                sub_id: None,
                filters: topic_filters
                    .into_iter()
                    .map(|(f, q)| {
                        (
                            f.to_string(),
                            SubOpts {
                                qos: qos_u8(q),
                                ..SubOpts::default()
                            },
                        )
                    })
                    .collect(),
            },
            v3::Packet::Unsubscribe {
                packet_id,
                topic_filters,
            } => In::Unsubscribe {
                pkid: packet_id.get(),
                filters: topic_filters.into_iter().map(|f| f.to_string()).collect(),
            },
            v3::Packet::PingRequest => In::Ping,
            v3::Packet::Disconnect => In::Disconnect {
                with_will: false,
                session_expiry: None,
            },
            _ => In::Unexpected("a packet only a server sends, or a second CONNECT"),
        },
        MqttPacket::V5(p) => match p {
            v5::Packet::Publish(p) => In::Publish(Box::new(publish_in(*p))),
            v5::Packet::PublishAck(a) => In::PubAck(a.packet_id.get()),
            v5::Packet::PublishReceived(a) => In::PubRec(a.packet_id.get()),
            v5::Packet::PublishRelease(a) => In::PubRel(a.packet_id.get()),
            v5::Packet::PublishComplete(a) => In::PubComp(a.packet_id.get()),
            v5::Packet::Subscribe(s) => In::Subscribe {
                pkid: s.packet_id.get(),
                sub_id: s.id.map(NonZeroU32::get),
                filters: s
                    .topic_filters
                    .into_iter()
                    .map(|(f, o)| {
                        (
                            f.to_string(),
                            SubOpts {
                                qos: qos_u8(o.qos),
                                no_local: o.no_local,
                                retain_as_published: o.retain_as_published,
                                retain_handling: match o.retain_handling {
                                    v5::RetainHandling::AtSubscribe => 0,
                                    v5::RetainHandling::AtSubscribeNew => 1,
                                    v5::RetainHandling::NoAtSubscribe => 2,
                                },
                            },
                        )
                    })
                    .collect(),
            },
            v5::Packet::Unsubscribe(u) => In::Unsubscribe {
                pkid: u.packet_id.get(),
                filters: u.topic_filters.into_iter().map(|f| f.to_string()).collect(),
            },
            v5::Packet::PingRequest => In::Ping,
            v5::Packet::Disconnect(d) => In::Disconnect {
                with_will: d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage,
                session_expiry: d.session_expiry_interval_secs,
            },
            _ => In::Unexpected("a packet only a server sends, AUTH, or a second CONNECT"),
        },
        MqttPacket::Version(_) => In::Unexpected("a second CONNECT"),
    }
}

fn pkid(n: u16) -> Option<NonZeroU16> {
    NonZeroU16::new(n)
}

/// Builds an outbound PUBLISH.
#[allow(clippy::too_many_arguments)]
pub(crate) fn publish(
    ver: Ver,
    topic: &str,
    payload: Bytes,
    qos: u8,
    retain: bool,
    dup: bool,
    packet_id: Option<u16>,
    props: &MsgProps,
    sub_ids: &[u32],
) -> MqttPacket {
    let properties = match ver {
        Ver::V3 => None,
        Ver::V5 => Some(v5::PublishProperties {
            topic_alias: props.topic_alias.and_then(NonZeroU16::new),
            correlation_data: props.correlation_data.clone(),
            message_expiry_interval: props.message_expiry.and_then(NonZeroU32::new),
            content_type: props.content_type.as_deref().map(ByteString::from),
            user_properties: props
                .user_properties
                .iter()
                .map(|(k, v)| (ByteString::from(k.as_str()), ByteString::from(v.as_str())))
                .collect(),
            is_utf8_payload: props.payload_is_utf8,
            response_topic: props.response_topic.as_deref().map(ByteString::from),
            subscription_ids: sub_ids.iter().filter_map(|i| NonZeroU32::new(*i)).collect(),
        }),
    };
    let p = rmqtt_codec::types::Publish {
        dup,
        retain,
        qos: qos_of(qos),
        topic: ByteString::from(topic),
        packet_id: packet_id.and_then(pkid),
        payload,
        properties,
    };
    match ver {
        Ver::V3 => MqttPacket::V3(v3::Packet::Publish(Box::new(p))),
        Ver::V5 => MqttPacket::V5(v5::Packet::Publish(Box::new(p))),
    }
}

/// Whether a PUBLISH with these properties has none on the wire: then
/// [`encode_plain_publish`] writes it.
pub(crate) fn has_no_properties(props: &MsgProps, sub_ids: &[u32]) -> bool {
    props.topic_alias.is_none_or(|a| a == 0)
        && props.correlation_data.is_none()
        && props.message_expiry.is_none_or(|e| e == 0)
        && props.content_type.is_none()
        && !props.payload_is_utf8
        && props.response_topic.is_none()
        && props.user_properties.is_empty()
        && sub_ids.iter().all(|i| *i == 0)
}

/// Writes a PUBLISH without properties straight into the connection's write buffer,
/// byte for byte what rmqtt-codec writes (tested below).
///
/// By hand because this is the one packet on the hot path: going through the codec
/// costs a boxed packet and a copy of the topic per message, which on a QoS 0 fan-in was
/// a visible share of the broker's CPU. Anything with properties takes the codec.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_plain_publish(
    buf: &mut bytes::BytesMut,
    ver: Ver,
    topic: &str,
    payload: &[u8],
    qos: u8,
    retain: bool,
    dup: bool,
    packet_id: Option<u16>,
) {
    use bytes::BufMut;
    let id = packet_id.filter(|_| qos > 0);
    let props = usize::from(ver == Ver::V5);
    let remaining = 2 + topic.len() + if id.is_some() { 2 } else { 0 } + props + payload.len();
    buf.reserve(1 + vbi_len(remaining) + remaining);
    buf.put_u8(0x30 | (u8::from(dup) << 3) | ((qos.min(2)) << 1) | u8::from(retain));
    let mut n = remaining;
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if n == 0 {
            break;
        }
    }
    buf.put_u16(topic.len() as u16);
    buf.put_slice(topic.as_bytes());
    if let Some(id) = id {
        buf.put_u16(id);
    }
    if props == 1 {
        buf.put_u8(0);
    }
    buf.put_slice(payload);
}

/// Bytes a variable byte integer takes (MQTT 1.5.5).
fn vbi_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// The exact encoded size of the PUBLISH [`publish`] builds from the same arguments
/// (fixed header included), for the client's Maximum Packet Size: a packet that fits
/// must never be dropped as too large [MQTT-3.1.2-24/25].
pub(crate) fn publish_size(
    ver: Ver,
    topic: &str,
    payload_len: usize,
    qos: u8,
    props: &MsgProps,
    sub_ids: &[u32],
) -> usize {
    let mut remaining = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload_len;
    if ver == Ver::V5 {
        let string = |s: &Option<String>| s.as_ref().map_or(0, |s| 3 + s.len());
        let props_len = props.topic_alias.filter(|a| *a != 0).map_or(0, |_| 3)
            + props.correlation_data.as_ref().map_or(0, |c| 3 + c.len())
            + props.message_expiry.filter(|e| *e != 0).map_or(0, |_| 5)
            + string(&props.content_type)
            + if props.payload_is_utf8 { 2 } else { 0 }
            + string(&props.response_topic)
            + sub_ids
                .iter()
                .filter(|i| **i != 0)
                .map(|i| 1 + vbi_len(*i as usize))
                .sum::<usize>()
            + props
                .user_properties
                .iter()
                .map(|(k, v)| 5 + k.len() + v.len())
                .sum::<usize>();
        remaining += vbi_len(props_len) + props_len;
    }
    1 + vbi_len(remaining) + remaining
}

/// The four acknowledgement kinds of the QoS flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ack {
    Puback,
    Pubrec,
    Pubrel,
    Pubcomp,
}

/// An acknowledgement; `error` (MQTT 5 only) carries a failure reason code.
pub(crate) fn ack(ver: Ver, kind: Ack, id: u16, error: Option<u8>) -> Option<MqttPacket> {
    let packet_id = pkid(id)?;
    Some(match ver {
        Ver::V3 => MqttPacket::V3(match kind {
            Ack::Puback => v3::Packet::PublishAck { packet_id },
            Ack::Pubrec => v3::Packet::PublishReceived { packet_id },
            Ack::Pubrel => v3::Packet::PublishRelease { packet_id },
            Ack::Pubcomp => v3::Packet::PublishComplete { packet_id },
        }),
        Ver::V5 => {
            let a1 = || v5::PublishAck {
                packet_id,
                reason_code: error
                    .and_then(|c| v5::PublishAckReason::try_from(c).ok())
                    .unwrap_or(v5::PublishAckReason::Success),
                properties: Vec::new(),
                reason_string: None,
            };
            let a2 = || v5::PublishAck2 {
                packet_id,
                reason_code: error
                    .and_then(|c| v5::PublishAck2Reason::try_from(c).ok())
                    .unwrap_or(v5::PublishAck2Reason::Success),
                properties: Vec::new(),
                reason_string: None,
            };
            MqttPacket::V5(match kind {
                Ack::Puback => v5::Packet::PublishAck(a1()),
                Ack::Pubrec => v5::Packet::PublishReceived(a1()),
                Ack::Pubrel => v5::Packet::PublishRelease(a2()),
                Ack::Pubcomp => v5::Packet::PublishComplete(a2()),
            })
        }
    })
}

/// SUBACK; each code is a granted QoS (0–2) or an MQTT 5 failure reason (≥ 0x80).
pub(crate) fn suback(ver: Ver, id: u16, codes: &[u8]) -> Option<MqttPacket> {
    let packet_id = pkid(id)?;
    Some(match ver {
        Ver::V3 => MqttPacket::V3(v3::Packet::SubscribeAck {
            packet_id,
            status: codes
                .iter()
                .map(|c| match c {
                    0..=2 => v3::SubscribeReturnCode::Success(qos_of(*c)),
                    _ => v3::SubscribeReturnCode::Failure,
                })
                .collect(),
        }),
        Ver::V5 => MqttPacket::V5(v5::Packet::SubscribeAck(v5::SubscribeAck {
            packet_id,
            properties: Vec::new(),
            reason_string: None,
            status: codes
                .iter()
                .map(|c| {
                    v5::SubscribeAckReason::try_from(*c)
                        .unwrap_or(v5::SubscribeAckReason::UnspecifiedError)
                })
                .collect(),
        })),
    })
}

/// UNSUBACK; `found[i]` tells whether filter i was subscribed (MQTT 5 reports it).
pub(crate) fn unsuback(ver: Ver, id: u16, found: &[bool]) -> Option<MqttPacket> {
    let packet_id = pkid(id)?;
    Some(match ver {
        Ver::V3 => MqttPacket::V3(v3::Packet::UnsubscribeAck { packet_id }),
        Ver::V5 => MqttPacket::V5(v5::Packet::UnsubscribeAck(v5::UnsubscribeAck {
            packet_id,
            properties: Vec::new(),
            reason_string: None,
            status: found
                .iter()
                .map(|f| {
                    if *f {
                        v5::UnsubscribeAckReason::Success
                    } else {
                        v5::UnsubscribeAckReason::NoSubscriptionExisted
                    }
                })
                .collect(),
        })),
    })
}

pub(crate) fn pong(ver: Ver) -> MqttPacket {
    match ver {
        Ver::V3 => MqttPacket::V3(v3::Packet::PingResponse),
        Ver::V5 => MqttPacket::V5(v5::Packet::PingResponse),
    }
}

/// A server DISCONNECT with a reason (MQTT 5 only; 3.1.1 servers just close).
pub(crate) fn disconnect(ver: Ver, reason: u8, why: &str) -> Option<MqttPacket> {
    match ver {
        Ver::V3 => None,
        Ver::V5 => {
            let code = v5::DisconnectReasonCode::try_from(reason)
                .unwrap_or(v5::DisconnectReasonCode::UnspecifiedError);
            let mut d = v5::Disconnect::new(code);
            d.reason_string = Some(ByteString::from(why));
            Some(MqttPacket::V5(v5::Packet::Disconnect(d)))
        }
    }
}

/// What a CONNECT asks for, version-neutral.
#[derive(Debug)]
pub(crate) struct ConnectIn {
    pub(crate) client_id: String,
    pub(crate) clean: bool,
    pub(crate) keep_alive: u16,
    pub(crate) username: Option<String>,
    pub(crate) will: Option<PublishIn>,
    pub(crate) will_delay: u32,
    pub(crate) receive_max: u16,
    /// Seconds the session outlives the connection (3.1.1: 0 when clean, else forever).
    pub(crate) session_expiry: u32,
    /// Topic aliases the client accepts from us.
    pub(crate) topic_alias_max: u16,
    /// Largest packet the client accepts from us.
    pub(crate) max_packet_size: u32,
    pub(crate) password: Option<Bytes>,
}

pub(crate) fn connect_in(p: MqttPacket) -> Result<(Ver, ConnectIn), &'static str> {
    match p {
        MqttPacket::V3(v3::Packet::Connect(c)) => Ok((
            Ver::V3,
            ConnectIn {
                client_id: c.client_id.to_string(),
                clean: c.clean_session,
                keep_alive: c.keep_alive,
                username: c.username.map(|u| u.to_string()),
                will: c.last_will.map(|w| PublishIn {
                    topic: w.topic.to_string(),
                    payload: w.message,
                    qos: qos_u8(w.qos),
                    retain: w.retain,
                    pkid: None,
                    props: MsgProps::default(),
                }),
                will_delay: 0,
                receive_max: u16::MAX,
                session_expiry: if c.clean_session { 0 } else { u32::MAX },
                topic_alias_max: 0,
                max_packet_size: u32::MAX,
                password: c.password,
            },
        )),
        MqttPacket::V5(v5::Packet::Connect(c)) => Ok((
            Ver::V5,
            ConnectIn {
                client_id: c.client_id.to_string(),
                clean: c.clean_start,
                keep_alive: c.keep_alive,
                username: c.username.map(|u| u.to_string()),
                will_delay: c
                    .last_will
                    .as_ref()
                    .and_then(|w| w.will_delay_interval_sec)
                    .unwrap_or(0),
                will: c.last_will.map(|w| PublishIn {
                    topic: w.topic.to_string(),
                    payload: w.message,
                    qos: qos_u8(w.qos),
                    retain: w.retain,
                    pkid: None,
                    props: MsgProps {
                        content_type: w.content_type.map(|s| s.to_string()),
                        response_topic: w.response_topic.map(|s| s.to_string()),
                        correlation_data: w.correlation_data,
                        user_properties: user_props(w.user_properties),
                        payload_is_utf8: w.is_utf8_payload.unwrap_or(false),
                        topic_alias: None,
                        message_expiry: w.message_expiry_interval.map(NonZeroU32::get),
                    },
                }),
                receive_max: c.receive_max.map(NonZeroU16::get).unwrap_or(u16::MAX),
                session_expiry: c.session_expiry_interval_secs,
                topic_alias_max: c.topic_alias_max,
                max_packet_size: c.max_packet_size.map(NonZeroU32::get).unwrap_or(u32::MAX),
                password: c.password,
            },
        )),
        _ => Err("the first packet must be CONNECT"),
    }
}

/// CONNACK. `refuse` is a version-specific reason code; `assigned` is an assigned id.
pub(crate) fn connack(
    ver: Ver,
    session_present: bool,
    refuse: Option<u8>,
    assigned: Option<&str>,
    server: &ServerCaps,
) -> MqttPacket {
    match ver {
        Ver::V3 => MqttPacket::V3(v3::Packet::ConnectAck(v3::ConnectAck {
            return_code: refuse
                .and_then(|c| v3::ConnectAckReason::try_from(c).ok())
                .unwrap_or(v3::ConnectAckReason::ConnectionAccepted),
            session_present,
        })),
        Ver::V5 => {
            let ack = v5::ConnectAck {
                session_present,
                reason_code: refuse
                    .and_then(|c| v5::ConnectAckReason::try_from(c).ok())
                    .unwrap_or(v5::ConnectAckReason::Success),
                receive_max: NonZeroU16::new(server.receive_max).unwrap_or(NonZeroU16::MIN),
                max_packet_size: Some(server.max_packet_size),
                assigned_client_id: assigned.map(ByteString::from),
                topic_alias_max: server.topic_alias_max,
                server_keepalive_sec: server.keep_alive_override,
                ..v5::ConnectAck::default()
            };
            MqttPacket::V5(v5::Packet::ConnectAck(Box::new(ack)))
        }
    }
}

/// What the server tells MQTT 5 clients about itself.
#[derive(Clone, Debug)]
pub(crate) struct ServerCaps {
    pub(crate) receive_max: u16,
    pub(crate) max_packet_size: u32,
    pub(crate) topic_alias_max: u16,
    pub(crate) keep_alive_override: Option<u16>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio_util::codec::Encoder;

    fn encoded_len(ver: Ver, p: MqttPacket) -> usize {
        let mut buf = bytes::BytesMut::new();
        let mut codec = match ver {
            Ver::V3 => rmqtt_codec::MqttCodec::V3(v3::Codec::new(u32::MAX)),
            Ver::V5 => rmqtt_codec::MqttCodec::V5(v5::Codec::new(u32::MAX, u32::MAX)),
        };
        codec.encode(p, &mut buf).expect("encodes");
        buf.len()
    }

    proptest! {
        /// A PUBLISH without properties written by hand is the codec's, byte for byte.
        #[test]
        fn plain_publish_encoding_is_the_codecs(
            v5 in any::<bool>(),
            topic in "[a-z/]{0,300}",
            payload in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..200),
                proptest::collection::vec(any::<u8>(), 16_000..17_000)
            ],
            qos in 0u8..3,
            retain in any::<bool>(),
            dup in any::<bool>(),
            id in 1u16..u16::MAX,
        ) {
            let ver = if v5 { Ver::V5 } else { Ver::V3 };
            let id = (qos > 0).then_some(id);
            let props = MsgProps::default();
            let mut want = bytes::BytesMut::new();
            let mut codec = match ver {
                Ver::V3 => rmqtt_codec::MqttCodec::V3(v3::Codec::new(u32::MAX)),
                Ver::V5 => rmqtt_codec::MqttCodec::V5(v5::Codec::new(u32::MAX, u32::MAX)),
            };
            let p = publish(ver, &topic, Bytes::from(payload.clone()), qos, retain, dup, id, &props, &[]);
            codec.encode(p, &mut want).expect("encodes");
            let mut got = bytes::BytesMut::new();
            encode_plain_publish(&mut got, ver, &topic, &payload, qos, retain, dup, id);
            prop_assert_eq!(got, want);
        }

        /// The size the broker checks against a client's Maximum Packet Size is the size
        /// rmqtt-codec writes, byte for byte, whatever the properties.
        #[test]
        fn publish_size_is_exact(
            v5 in any::<bool>(),
            topic in "[a-z/]{0,300}",
            payload_len in prop_oneof![0usize..200, 16_000usize..17_000],
            qos in 0u8..3,
            alias in proptest::option::of(0u16..3),
            expiry in proptest::option::of(0u32..3),
            content_type in proptest::option::of("[a-z/]{0,140}"),
            response_topic in proptest::option::of("[a-z]{0,20}"),
            correlation in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
            utf8 in any::<bool>(),
            users in proptest::collection::vec(("[a-z]{0,9}", "[a-z]{0,30}"), 0..5),
            sub_ids in proptest::collection::vec(prop_oneof![1u32..200, 200u32..=268_435_455], 0..4),
        ) {
            let ver = if v5 { Ver::V5 } else { Ver::V3 };
            let props = MsgProps {
                content_type,
                response_topic,
                correlation_data: correlation.map(Bytes::from),
                user_properties: users,
                payload_is_utf8: utf8,
                topic_alias: alias,
                message_expiry: expiry,
            };
            let payload = Bytes::from(vec![b'x'; payload_len]);
            let pkid = (qos > 0).then_some(7);
            let want = publish_size(ver, &topic, payload_len, qos, &props, &sub_ids);
            let p = publish(ver, &topic, payload, qos, false, false, pkid, &props, &sub_ids);
            prop_assert_eq!(want, encoded_len(ver, p));
        }
    }
}
