//! Consumer-group positions and adapter state: small keyed rows the hub and adapters
//! persist alongside the log.

use bytes::Bytes;
use polyport_core::HubResult;
use polyport_core::engine::WriteOutcome;
use rusqlite::{Transaction, params};

use super::sql_err;

/// Sets (`Some`) or removes (`None`) one entry of an adapter's state.
pub(super) fn put_state(
    tx: &Transaction<'_>,
    namespace: &str,
    key: &str,
    value: Option<Bytes>,
) -> HubResult<WriteOutcome> {
    match value {
        Some(v) => crate::db::exec(
            tx,
            "INSERT INTO adapter_state (namespace, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
            params![namespace, key, v.as_ref()],
        ),
        None => crate::db::exec(
            tx,
            "DELETE FROM adapter_state WHERE namespace = ?1 AND key = ?2",
            params![namespace, key],
        ),
    }
    .map_err(sql_err)?;
    Ok(WriteOutcome::Done)
}

/// Forgets the saved positions of every consumer whose key starts with `prefix`.
pub(super) fn delete(tx: &Transaction<'_>, prefix: &str) -> HubResult<WriteOutcome> {
    // substr() rather than LIKE: group names may contain `%` and `_`.
    crate::db::exec(
        tx,
        "DELETE FROM consumers WHERE substr(key, 1, length(?1)) = ?1",
        params![prefix],
    )
    .map_err(sql_err)?;
    Ok(WriteOutcome::Done)
}

/// Persists a consumer group's acknowledged position; the first save names its owner,
/// which later saves do not change.
pub(super) fn save(
    tx: &Transaction<'_>,
    key: &str,
    position: u64,
    owner: Option<&str>,
) -> HubResult<WriteOutcome> {
    crate::db::exec(
        tx,
        "INSERT INTO consumers (key, position, owner) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET position = excluded.position",
        params![key, position as i64, owner],
    )
    .map_err(sql_err)?;
    Ok(WriteOutcome::Done)
}
