//! Upgrades a data directory written by an earlier release, once, when it is opened;
//! `meta.schema_version` records how far it is. Each step runs in one transaction, so a
//! crash midway leaves the directory as it was.
//!
//! - **1 → 2, typed message attributes.** `events` gains `attrs` and `sender`. The MQTT
//!   adapter of release 1 carried its meaning as `mqtt-*` headers on the events it logged;
//!   on those events (origin `mqtt`) the headers become attributes and the client id the
//!   sender, exactly as today's adapter would have stored them. On events that entered
//!   through other doors such headers were user input (`ce-mqtt-client: …` over HTTP) and
//!   stay user headers. `tests/upgrade.rs` in the binary opens a release-1 directory.
//! - **2 → 3, group owners.** `consumers` gains `owner`: the identity that created a
//!   named group, so groups can be capped per identity. Groups saved before have none
//!   and count against nobody.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use chrono::{TimeZone, Utc};
use polyport_core::{Attributes, Guarantee, Sender, Topic};
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::StoreError;

/// The schema this release writes.
pub(crate) const SCHEMA_VERSION: u32 = 3;

pub(crate) fn run(conn: &Connection) -> Result<(), StoreError> {
    let version: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let version = match version {
        Some(v) => v.parse::<u32>().unwrap_or(0),
        // A directory without a version is release 1's, or brand new (then the steps
        // below find nothing to change).
        None => 1,
    };
    if version > SCHEMA_VERSION {
        return Err(StoreError::Schema(format!(
            "this data directory was written by a newer Polyport (schema {version}; this release reads up to {SCHEMA_VERSION})"
        )));
    }
    if version < 2 {
        to_2(conn)?;
    }
    if version < 3 {
        to_3(conn)?;
    }
    Ok(())
}

fn to_3(conn: &Connection) -> Result<(), StoreError> {
    let tx = conn.unchecked_transaction()?;
    if !has_column(&tx, "consumers", "owner")? {
        tx.execute_batch("ALTER TABLE consumers ADD COLUMN owner TEXT")?;
    }
    tx.execute_batch(
        "CREATE INDEX IF NOT EXISTS consumers_owner ON consumers (owner) WHERE owner IS NOT NULL",
    )?;
    tx.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', '3')",
        [],
    )?;
    tx.commit()?;
    Ok(())
}

fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool, StoreError> {
    let mut st = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    let names = st.query_map([], |r| r.get::<_, String>(1))?;
    for n in names {
        if n? == column {
            return Ok(true);
        }
    }
    Ok(false)
}

fn to_2(conn: &Connection) -> Result<(), StoreError> {
    let tx = conn.unchecked_transaction()?;
    for col in ["attrs", "sender"] {
        if !has_column(&tx, "events", col)? {
            tx.execute_batch(&format!("ALTER TABLE events ADD COLUMN {col} TEXT"))?;
        }
    }
    let rows: Vec<(i64, String)> = {
        let mut st = tx.prepare(
            "SELECT seq, headers FROM events
             WHERE origin = 'mqtt' AND attrs IS NULL AND headers LIKE '%\"mqtt-%'",
        )?;
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?
    };
    let n = rows.len();
    for (seq, headers) in rows {
        let headers: Vec<(String, String)> = serde_json::from_str(&headers).unwrap_or_default();
        let (attrs, client, user) = from_mqtt_headers(headers);
        let sender = client.map(|c| Sender {
            connection: 0,
            client_id: Some(c.into()),
        });
        tx.execute(
            "UPDATE events SET headers = ?2, attrs = ?3, sender = ?4 WHERE seq = ?1",
            params![
                seq,
                (!user.is_empty())
                    .then(|| serde_json::to_string(&user).ok())
                    .flatten(),
                serde_json::to_string(&attrs).ok(),
                sender.and_then(|s| serde_json::to_string(&s).ok()),
            ],
        )?;
    }
    tx.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', '2')",
        [],
    )?;
    tx.commit()?;
    if n > 0 {
        tracing::info!(events = n, "upgraded MQTT events to typed attributes");
    }
    Ok(())
}

/// Release 1's MQTT headers → attributes, the client id, and the user headers left.
fn from_mqtt_headers(
    headers: Vec<(String, String)>,
) -> (Attributes, Option<String>, Vec<(String, String)>) {
    let mut a = Attributes::default();
    let mut client = None;
    let mut user = Vec::new();
    for (k, v) in headers {
        match k.as_str() {
            "mqtt-qos" => {
                a.guarantee = match v.as_str() {
                    "0" => Some(Guarantee::AtMostOnce),
                    "1" => Some(Guarantee::AtLeastOnce),
                    "2" => Some(Guarantee::ExactlyOnce),
                    _ => None,
                }
            }
            "mqtt-client" => client = Some(v),
            "mqtt-retain" => a.retain = v == "1",
            "mqtt-response-topic" => a.reply_to = Topic::new(&v).ok(),
            "mqtt-correlation-data" => a.correlation_id = B64.decode(v).ok().map(Bytes::from),
            "mqtt-expires" => {
                a.expires_at = v
                    .parse::<i64>()
                    .ok()
                    .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            }
            "mqtt-utf8" => a.utf8 = v == "1",
            _ => user.push((k, v)),
        }
    }
    (a, client, user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_1_mqtt_headers_become_attributes() {
        let h = |k: &str, v: &str| (k.to_string(), v.to_string());
        let (a, client, user) = from_mqtt_headers(vec![
            h("k", "v1"),
            h("mqtt-qos", "2"),
            h("mqtt-client", "dev-7"),
            h("mqtt-retain", "1"),
            h("mqtt-response-topic", "replies/x"),
            h("mqtt-correlation-data", "AGNvcnI="),
            h("mqtt-expires", "1796210082687"),
            h("mqtt-utf8", "1"),
            h("k", "v2"),
        ]);
        assert_eq!(client.as_deref(), Some("dev-7"));
        assert_eq!(user, vec![h("k", "v1"), h("k", "v2")]);
        assert_eq!(a.guarantee, Some(Guarantee::ExactlyOnce));
        assert!(a.retain && a.utf8);
        assert_eq!(a.reply_to.as_ref().map(|t| t.as_str()), Some("replies/x"));
        assert_eq!(a.correlation_id.as_deref(), Some(&b"\x00corr"[..]));
        assert_eq!(
            a.expires_at.map(|t| t.timestamp_millis()),
            Some(1_796_210_082_687)
        );
    }
}
