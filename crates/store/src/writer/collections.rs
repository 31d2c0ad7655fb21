//! Collection definitions: create, replace and delete, the auto-create path of record
//! writes, and the unique indexes that enforce `unique` fields.

use std::sync::Arc;

use polyport_core::engine::WriteOutcome;
use polyport_core::record::format_time;
use polyport_core::schema::{Collection, CollectionSpec, FieldError, Rule};
use polyport_core::{HubError, HubResult};
use rusqlite::{Transaction, params};

use super::{State, now, sql_err};

pub(super) fn create(
    tx: &Transaction<'_>,
    st: &mut State,
    spec: CollectionSpec,
) -> HubResult<WriteOutcome> {
    if st.collections.contains_key(&spec.name) {
        return Err(HubError::AlreadyExists(format!(
            "collection '{}'",
            spec.name
        )));
    }
    put_collection(tx, st, spec, None)
}

pub(super) fn replace(
    tx: &Transaction<'_>,
    st: &mut State,
    spec: CollectionSpec,
) -> HubResult<WriteOutcome> {
    let existing = st
        .collections
        .get(&spec.name)
        .cloned()
        .ok_or_else(|| HubError::CollectionNotFound(spec.name.clone()))?;
    put_collection(tx, st, spec, Some(&existing))
}

/// Deletes a collection with its records and unique indexes.
pub(super) fn delete(
    tx: &Transaction<'_>,
    st: &mut State,
    name: String,
) -> HubResult<WriteOutcome> {
    if !st.collections.contains_key(&name) {
        return Err(HubError::CollectionNotFound(name));
    }
    tx.execute("DELETE FROM records WHERE collection = ?1", params![name])
        .map_err(sql_err)?;
    tx.execute("DELETE FROM collections WHERE name = ?1", params![name])
        .map_err(sql_err)?;
    for idx in unique_indexes(tx, &name)? {
        tx.execute_batch(&format!("DROP INDEX IF EXISTS \"{idx}\""))
            .map_err(sql_err)?;
    }
    st.collections.remove(&name);
    Ok(WriteOutcome::Done)
}

pub(super) fn ensure_collection(
    tx: &Transaction<'_>,
    st: &mut State,
    name: &str,
    auto_create: bool,
) -> HubResult<Arc<Collection>> {
    if let Some(c) = st.collections.get(name) {
        return Ok(c.clone());
    }
    if !auto_create {
        return Err(HubError::CollectionNotFound(name.to_string()));
    }
    let spec = CollectionSpec {
        name: name.to_string(),
        fields: None,
        additional_fields: false,
        description: None,
        rules: None,
    };
    spec.check().map_err(HubError::Validation)?;
    match put_collection(tx, st, spec, None)? {
        WriteOutcome::Collection(c) => Ok(c),
        _ => Err(HubError::Storage(
            "collection create returned nothing".into(),
        )),
    }
}

/// Unique indexes are named `uq:{collection}:{field}`; identifiers cannot contain `:`,
/// so the name maps back to exactly one collection and field.
fn unique_index_name(collection: &str, field: &str) -> String {
    format!("uq:{collection}:{field}")
}

/// The `(collection, field)` of the unique index a constraint violation names, if any.
pub(super) fn unique_violation(e: &rusqlite::Error) -> Option<(String, String)> {
    if let rusqlite::Error::SqliteFailure(err, Some(msg)) = e
        && err.code == rusqlite::ErrorCode::ConstraintViolation
    {
        let start = msg.find("uq:")?;
        let name = msg[start..].split(['\'', '"', ' ']).next()?;
        let mut parts = name.splitn(3, ':').skip(1);
        return Some((parts.next()?.to_string(), parts.next()?.to_string()));
    }
    None
}

fn unique_indexes(tx: &Transaction<'_>, collection: &str) -> HubResult<Vec<String>> {
    let prefix = unique_index_name(collection, "");
    let mut stmt = tx
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND substr(name, 1, ?2) = ?1")
        .map_err(sql_err)?;
    let names = stmt
        .query_map(params![prefix, prefix.len() as i64], |r| {
            r.get::<_, String>(0)
        })
        .map_err(sql_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql_err)?;
    Ok(names)
}

fn put_collection(
    tx: &Transaction<'_>,
    st: &mut State,
    spec: CollectionSpec,
    existing: Option<&Collection>,
) -> HubResult<WriteOutcome> {
    let mut errors = Vec::new();
    for (i, f) in spec.fields.iter().flatten().enumerate() {
        if let Some(target) = f.ty.relation_target()
            && target != spec.name
            && !st.collections.contains_key(target)
        {
            errors.push(FieldError::new(
                &format!("fields[{i}].collection"),
                Rule::Relation,
                format!("refers to collection '{target}', which does not exist"),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(HubError::Validation(errors));
    }
    let now = now();
    let created_at = existing.map(|c| c.created_at).unwrap_or(now);
    let spec_json = serde_json::to_string(&spec)
        .map_err(|e| HubError::Storage(format!("encoding collection: {e}")))?;
    tx.execute(
        "INSERT INTO collections (name, spec, created_at, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
        params![
            spec.name,
            spec_json,
            format_time(&created_at),
            format_time(&now)
        ],
    )
    .map_err(sql_err)?;
    // Unique fields are enforced by partial expression indexes, so the database itself
    // refuses a duplicate even under concurrent writers.
    let wanted: Vec<String> = spec
        .fields
        .iter()
        .flatten()
        .filter(|f| f.unique)
        .map(|f| unique_index_name(&spec.name, &f.name))
        .collect();
    for idx in unique_indexes(tx, &spec.name)? {
        if !wanted.contains(&idx) {
            tx.execute_batch(&format!("DROP INDEX IF EXISTS \"{idx}\""))
                .map_err(sql_err)?;
        }
    }
    for f in spec.fields.iter().flatten().filter(|f| f.unique) {
        // Names are validated identifiers, so interpolation is safe.
        let sql = format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS \"{idx}\" ON records (json_extract(data, '$.\"{f}\"')) WHERE collection = '{c}'",
            idx = unique_index_name(&spec.name, &f.name),
            c = spec.name,
            f = f.name
        );
        tx.execute_batch(&sql).map_err(sql_err)?;
    }
    let coll = Arc::new(Collection {
        spec,
        created_at,
        updated_at: now,
    });
    st.collections.insert(coll.spec.name.clone(), coll.clone());
    Ok(WriteOutcome::Collection(coll))
}
