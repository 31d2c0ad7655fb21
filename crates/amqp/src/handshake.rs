//! The start of a connection: protocol header, `connection.start` with RabbitMQ's
//! capabilities, PLAIN / AMQPLAIN login through the Hub, tune and open; and the
//! `connection.close` every refusal ends with.

use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, connection as conn};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use futures::{SinkExt, StreamExt};
use polyport_broker::Broker;
use polyport_core::{AuthContext, HubError, Origin};
use tokio::io::AsyncWriteExt;

use crate::AmqpConfig;
use crate::codec::{CodecError, Incoming, PROTOCOL_HEADER};
use crate::connection::{MIN_FRAME, Transport};
use crate::error::Code;
use crate::props::short;

/// What the handshake settled.
pub(crate) struct Negotiated {
    pub(crate) ctx: AuthContext,
    pub(crate) frame_max: usize,
    pub(crate) channel_max: u16,
    pub(crate) heartbeat: u16,
    pub(crate) notify_blocked: bool,
}

fn server_properties() -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "basic.nack",
        "consumer_cancel_notify",
        "authentication_failure_close",
        "per_consumer_qos",
        "exchange_exchange_bindings",
        "connection.blocked",
    ] {
        caps.insert(short(cap), AMQPValue::Boolean(true));
    }
    for cap in ["consumer_priorities", "direct_reply_to"] {
        caps.insert(short(cap), AMQPValue::Boolean(false));
    }
    let mut p = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    p.insert(short("product"), text("Polyport"));
    p.insert(short("version"), text(env!("CARGO_PKG_VERSION")));
    p.insert(short("platform"), text("Rust"));
    p.insert(short("information"), text("https://github.com/polyport"));
    p.insert(short("capabilities"), AMQPValue::FieldTable(caps));
    p
}

async fn next_method(io: &mut Transport) -> Option<AMQPClass> {
    loop {
        match io.next().await? {
            Ok(Incoming::Frame(f)) => match *f {
                AMQPFrame::Method(0, m) => return Some(m),
                AMQPFrame::Heartbeat => continue,
                _ => return None,
            },
            _ => return None,
        }
    }
}

/// The credentials of `start-ok`: PLAIN (`\0user\0pass`) or AMQPLAIN (a table).
fn credentials(s: &conn::StartOk) -> Option<(String, Vec<u8>)> {
    let r = s.response.as_bytes();
    match s.mechanism.as_str() {
        "PLAIN" => {
            let mut parts = r.split(|b| *b == 0);
            let _authzid = parts.next()?;
            let user = String::from_utf8(parts.next()?.to_vec()).ok()?;
            let pass = parts.next()?.to_vec();
            Some((user, pass))
        }
        "AMQPLAIN" => {
            // A field table without its length prefix.
            let mut framed = (r.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(r);
            let (_, t) = amq_protocol::types::parsing::parse_field_table(framed.as_slice()).ok()?;
            let get = |k: &str| match t.inner().get(k)? {
                AMQPValue::LongString(s) => Some(s.as_bytes().to_vec()),
                AMQPValue::ShortString(s) => Some(s.as_str().as_bytes().to_vec()),
                _ => None,
            };
            Some((String::from_utf8(get("LOGIN")?).ok()?, get("PASSWORD")?))
        }
        _ => None,
    }
}

pub(crate) async fn close_connection(
    io: &mut Transport,
    code: Code,
    text: &str,
    class_id: u16,
    method_id: u16,
) {
    let m = AMQPClass::Connection(conn::AMQPMethod::Close(conn::Close {
        reply_code: code.value(),
        reply_text: short(text),
        class_id,
        method_id,
    }));
    let _ = io.send(AMQPFrame::Method(0, m)).await;
    // Wait briefly for close-ok, then hang up.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(Incoming::Frame(f))) = io.next().await {
            if matches!(
                *f,
                AMQPFrame::Method(0, AMQPClass::Connection(conn::AMQPMethod::CloseOk(_)))
            ) {
                break;
            }
        }
    })
    .await;
}

/// Start, start-ok (authentication), tune, tune-ok, open. A client with a verified
/// certificate is also offered EXTERNAL (its certificate names it), as RabbitMQ's
/// `rabbitmq_auth_mechanism_ssl` does. A connection over the
/// listener's caps (`refusal`) is refused at open with 530, as RabbitMQ refuses one past a
/// vhost's connection limit.
pub(crate) async fn handshake(
    io: &mut Transport,
    peer: &polyport_core::adapter::Peer,
    broker: &Broker,
    cfg: &AmqpConfig,
    refusal: Option<polyport_core::admission::Refusal>,
) -> Option<Negotiated> {
    match io.next().await? {
        Ok(Incoming::Header) => {}
        Err(CodecError::BadHeader) => {
            // The spec: answer with the header we do speak, then close.
            let _ = io.get_mut().write_all(PROTOCOL_HEADER).await;
            let _ = io.get_mut().shutdown().await;
            return None;
        }
        _ => return None,
    }
    let start = conn::Start {
        version_major: 0,
        version_minor: 9,
        server_properties: server_properties(),
        mechanisms: match peer.certificate {
            Some(_) => "PLAIN AMQPLAIN EXTERNAL".into(),
            None => "PLAIN AMQPLAIN".into(),
        },
        locales: "en_US".into(),
    };
    io.send(AMQPFrame::Method(
        0,
        AMQPClass::Connection(conn::AMQPMethod::Start(start)),
    ))
    .await
    .ok()?;
    let AMQPClass::Connection(conn::AMQPMethod::StartOk(ok)) = next_method(io).await? else {
        return None;
    };
    let notify_blocked = match ok.client_properties.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(caps)) => matches!(
            caps.inner().get("connection.blocked"),
            Some(AMQPValue::Boolean(true))
        ),
        _ => false,
    };
    let ctx = match (credentials(&ok), &peer.certificate) {
        (_, Some(subject)) if ok.mechanism.as_str() == "EXTERNAL" => {
            broker.hub.authenticate_certificate(Origin("amqp"), subject)
        }
        (Some((user, pass)), _) => {
            broker
                .hub
                .authenticate(Origin("amqp"), Some(&user), Some(&pass))
        }
        (None, _) => Err(HubError::Unauthenticated(format!(
            "unsupported mechanism {}",
            ok.mechanism
        ))),
    };
    let ctx = match ctx {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(error = %e, "AMQP login refused");
            let text = format!(
                "ACCESS_REFUSED - Login was refused using authentication mechanism {}",
                ok.mechanism
            );
            close_connection(io, Code::AccessRefused, &text, 10, 11).await;
            return None;
        }
    };
    let tune = conn::Tune {
        channel_max: cfg.channel_max,
        frame_max: cfg.frame_max,
        heartbeat: cfg.heartbeat,
    };
    io.send(AMQPFrame::Method(
        0,
        AMQPClass::Connection(conn::AMQPMethod::Tune(tune)),
    ))
    .await
    .ok()?;
    let AMQPClass::Connection(conn::AMQPMethod::TuneOk(t)) = next_method(io).await? else {
        return None;
    };
    let pick = |ours: u32, theirs: u32| if theirs == 0 { ours } else { ours.min(theirs) };
    let frame_max = pick(cfg.frame_max, t.frame_max).max(MIN_FRAME as u32) as usize;
    let channel_max = pick(u32::from(cfg.channel_max), u32::from(t.channel_max)) as u16;
    io.codec_mut().frame_max = frame_max;
    let AMQPClass::Connection(conn::AMQPMethod::Open(open)) = next_method(io).await? else {
        return None;
    };
    if let Some(r) = refusal {
        tracing::info!(reason = %r, "AMQP connection refused: connection limit");
        let text = format!("NOT_ALLOWED - connection limit reached: {r}");
        close_connection(io, Code::NotAllowed, &text, 10, 40).await;
        return None;
    }
    if open.virtual_host.as_str() != "/" {
        let text = format!("NOT_ALLOWED - vhost {} not found", open.virtual_host);
        close_connection(io, Code::NotAllowed, &text, 10, 40).await;
        return None;
    }
    io.send(AMQPFrame::Method(
        0,
        AMQPClass::Connection(conn::AMQPMethod::OpenOk(conn::OpenOk {})),
    ))
    .await
    .ok()?;
    Some(Negotiated {
        ctx,
        frame_max,
        channel_max,
        heartbeat: t.heartbeat,
        notify_blocked,
    })
}
