//! Consumer-group positions and adapter state: small keyed rows the hub and adapters
//! persist alongside the log.

use bytes::Bytes;
use polyport_core::HubResult;
use polyport_core::engine::WriteOutcome;

use crate::tx::Tx;

/// Sets (`Some`) or removes (`None`) one entry of an adapter's state.
pub(super) fn put_state(
    tx: &mut dyn Tx,
    namespace: &str,
    key: &str,
    value: Option<Bytes>,
) -> HubResult<WriteOutcome> {
    tx.put_state(namespace, key, value.as_deref())?;
    Ok(WriteOutcome::Done)
}

/// Forgets the saved positions of every consumer whose key starts with `prefix`.
pub(super) fn delete(tx: &mut dyn Tx, prefix: &str) -> HubResult<WriteOutcome> {
    tx.delete_consumers(prefix)?;
    Ok(WriteOutcome::Done)
}

/// Persists a consumer group's acknowledged position; the first save names its owner,
/// which later saves do not change.
pub(super) fn save(
    tx: &mut dyn Tx,
    key: &str,
    position: u64,
    owner: Option<&str>,
) -> HubResult<WriteOutcome> {
    tx.save_consumer(key, position, owner)?;
    Ok(WriteOutcome::Done)
}
