//! Record writes: create, replace, merge-patch and delete, each validated against its
//! collection and appending exactly one change event.

use polyport_core::engine::{ChangeKind, WriteOutcome};
use polyport_core::event::Origin;
use polyport_core::record::{Record, merge_patch, new_id};
use polyport_core::schema::{Collection, FieldError, Rule};
use polyport_core::{HubError, HubResult};
use serde_json::{Map, Value};

use super::collections::ensure_collection;
use super::events::append_change;
use super::{State, now};
use crate::tx::Tx;

pub(super) fn create(
    tx: &mut dyn Tx,
    st: &mut State,
    collection: String,
    id: Option<String>,
    data: Map<String, Value>,
    auto_create: bool,
    origin: Origin,
) -> HubResult<WriteOutcome> {
    let coll = ensure_collection(tx, st, &collection, auto_create)?;
    // A generated id is new by construction: only a client's needs the look-up.
    let given = id.is_some();
    let id = id.unwrap_or_else(new_id);
    if given && tx.load_record(&collection, &id)?.is_some() {
        return Err(HubError::AlreadyExists(format!(
            "record '{id}' in collection '{collection}'"
        )));
    }
    insert_new(tx, st, &coll, id, data, origin)
}

/// Replaces the whole document; creates the record when missing and no version is expected.
#[allow(clippy::too_many_arguments)] // one per field of the command
pub(super) fn replace(
    tx: &mut dyn Tx,
    st: &mut State,
    collection: String,
    id: String,
    data: Map<String, Value>,
    expected_version: Option<u64>,
    auto_create: bool,
    origin: Origin,
) -> HubResult<WriteOutcome> {
    let coll = ensure_collection(tx, st, &collection, auto_create)?;
    match tx.load_record(&collection, &id)? {
        None if expected_version.is_some() => Err(HubError::RecordNotFound { collection, id }),
        None => insert_new(tx, st, &coll, id, data, origin),
        Some(prev) => {
            check_version(&prev, expected_version)?;
            update_existing(tx, st, &coll, prev, data, true, origin)
        }
    }
}

/// Applies an RFC 7396 merge patch to the stored document.
pub(super) fn patch(
    tx: &mut dyn Tx,
    st: &mut State,
    collection: String,
    id: String,
    patch: Value,
    expected_version: Option<u64>,
    origin: Origin,
) -> HubResult<WriteOutcome> {
    let coll = st
        .collections
        .get(&collection)
        .cloned()
        .ok_or_else(|| HubError::CollectionNotFound(collection.clone()))?;
    let prev = tx
        .load_record(&collection, &id)?
        .ok_or(HubError::RecordNotFound { collection, id })?;
    check_version(&prev, expected_version)?;
    if !patch.is_object() {
        return Err(HubError::InvalidRequest(
            "a merge patch for a record must be a JSON object".into(),
        ));
    }
    let mut doc = Value::Object(prev.data.clone());
    merge_patch(&mut doc, &patch);
    let Value::Object(data) = doc else {
        return Err(HubError::InvalidRequest(
            "patch must yield an object".into(),
        ));
    };
    update_existing(tx, st, &coll, prev, data, false, origin)
}

pub(super) fn delete(
    tx: &mut dyn Tx,
    st: &mut State,
    collection: String,
    id: String,
    expected_version: Option<u64>,
    origin: Origin,
) -> HubResult<WriteOutcome> {
    if !st.collections.contains_key(&collection) {
        return Err(HubError::CollectionNotFound(collection));
    }
    let prev = tx
        .load_record(&collection, &id)?
        .ok_or(HubError::RecordNotFound { collection, id })?;
    check_version(&prev, expected_version)?;
    tx.delete_record(&prev.collection, &prev.id)?;
    let event = append_change(tx, st, ChangeKind::Deleted, &prev, None, origin)?;
    Ok(WriteOutcome::Deleted {
        record: prev,
        event,
    })
}

fn check_version(rec: &Record, expected: Option<u64>) -> HubResult<()> {
    match expected {
        Some(v) if v != rec.version => Err(HubError::VersionMismatch {
            expected: v,
            current: rec.version,
        }),
        _ => Ok(()),
    }
}

/// Validates a document and checks its relations exist.
fn validate(
    tx: &mut dyn Tx,
    st: &State,
    coll: &Collection,
    data: &mut Map<String, Value>,
    apply_defaults: bool,
) -> HubResult<()> {
    let relations = coll
        .validate(data, apply_defaults)
        .map_err(HubError::Validation)?;
    let mut errors = Vec::new();
    for r in relations {
        let exists = st.collections.contains_key(&r.collection)
            && tx.load_record(&r.collection, &r.id)?.is_some();
        if !exists {
            errors.push(FieldError::new(
                &r.field,
                Rule::Relation,
                format!(
                    "refers to '{}', which does not exist in '{}'",
                    r.id, r.collection
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(HubError::Validation(errors))
    }
}

fn insert_new(
    tx: &mut dyn Tx,
    st: &mut State,
    coll: &Collection,
    id: String,
    mut data: Map<String, Value>,
    origin: Origin,
) -> HubResult<WriteOutcome> {
    validate(tx, st, coll, &mut data, true)?;
    let now = now();
    let record = Record {
        collection: coll.name().to_string(),
        id,
        created_at: now,
        updated_at: now,
        version: 1,
        data,
    };
    tx.insert_record(&record)?;
    let event = append_change(tx, st, ChangeKind::Created, &record, None, origin)?;
    Ok(WriteOutcome::Record {
        record,
        created: true,
        event,
    })
}

fn update_existing(
    tx: &mut dyn Tx,
    st: &mut State,
    coll: &Collection,
    prev: Record,
    mut data: Map<String, Value>,
    apply_defaults: bool,
    origin: Origin,
) -> HubResult<WriteOutcome> {
    validate(tx, st, coll, &mut data, apply_defaults)?;
    let now = now();
    let record = Record {
        collection: prev.collection.clone(),
        id: prev.id.clone(),
        created_at: prev.created_at,
        updated_at: now,
        version: prev.version + 1,
        data,
    };
    tx.update_record(&record)?;
    let event = append_change(tx, st, ChangeKind::Updated, &record, Some(&prev), origin)?;
    Ok(WriteOutcome::Record {
        record,
        created: false,
        event,
    })
}
