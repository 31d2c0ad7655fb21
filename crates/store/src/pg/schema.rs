//! The Postgres engine's tables, made (and later upgraded) when a node starts.
//!
//! Several nodes may start at once against one database: the whole migration runs in
//! one transaction under a transaction-level advisory lock keyed by the schema's name,
//! so one node creates the tables while the others wait, then find them made.
//!
//! Text that Polyport orders or compares (ids, times, keys) is `COLLATE "C"`: byte
//! order, as Rust and SQLite compare, whatever the database's default collation.
//! A record's document is kept twice: `data` (jsonb) for filters, sorts and unique
//! indexes, `doc` (its text as written) for reads, since jsonb reorders an object's
//! keys and a client must not see which engine is underneath.
//! Consumer and adapter-state keys are `bytea`: they may hold NUL (a group's key
//! separates its parts with it), which Postgres text cannot.

use polyport_core::schema::CollectionSpec;
use postgres::Client;

use crate::sql::FieldIndex;

/// `meta.schema_version` after [`migrate`].
const VERSION: i64 = 1;

const TABLES: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    key   text COLLATE "C" PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS log_head (
    one      boolean PRIMARY KEY DEFAULT true CHECK (one),
    last_seq bigint NOT NULL,
    schema   bigint NOT NULL DEFAULT 0
);
INSERT INTO log_head (one, last_seq) VALUES (true, 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS collections (
    name       text COLLATE "C" PRIMARY KEY,
    spec       text NOT NULL,
    created_at text COLLATE "C" NOT NULL,
    updated_at text COLLATE "C" NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    collection text COLLATE "C" NOT NULL,
    id         text COLLATE "C" NOT NULL,
    data       jsonb NOT NULL,
    doc        text NOT NULL,
    created_at text COLLATE "C" NOT NULL,
    updated_at text COLLATE "C" NOT NULL,
    version    bigint NOT NULL,
    PRIMARY KEY (collection, id)
);
CREATE INDEX IF NOT EXISTS records_created ON records (collection, created_at, id);
CREATE TABLE IF NOT EXISTS events (
    seq          bigint PRIMARY KEY,
    id           text NOT NULL,
    topic        text NOT NULL,
    type         text NOT NULL,
    time         bigint NOT NULL,
    content_type text,
    headers      text,
    payload      bytea NOT NULL,
    origin       text NOT NULL,
    attrs        text,
    sender       text
);
CREATE TABLE IF NOT EXISTS consumers (
    key      bytea PRIMARY KEY,
    position bigint NOT NULL,
    owner    text
);
CREATE TABLE IF NOT EXISTS adapter_state (
    namespace text COLLATE "C" NOT NULL,
    key       bytea NOT NULL,
    value     bytea NOT NULL,
    PRIMARY KEY (namespace, key)
);
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id   text COLLATE "C" PRIMARY KEY,
    body text NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    endpoint_id     text COLLATE "C" NOT NULL,
    seq             bigint NOT NULL,
    event_type      text NOT NULL,
    status          text NOT NULL,
    attempts        integer NOT NULL,
    next_attempt_at bigint,
    last_status     integer,
    created_at      bigint NOT NULL,
    updated_at      bigint NOT NULL,
    PRIMARY KEY (endpoint_id, seq)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_status ON webhook_deliveries (endpoint_id, status, seq);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    endpoint_id text COLLATE "C" NOT NULL,
    seq         bigint NOT NULL,
    number      integer NOT NULL,
    body        text NOT NULL,
    PRIMARY KEY (endpoint_id, seq, number)
);
"#;

/// A schema name Polyport accepts: it is interpolated into SQL as an identifier.
pub(crate) fn valid_schema(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A field index's name: a hash of collection and field (Postgres cuts identifiers at
/// 63 bytes), under a prefix per kind and collection (see [`index_prefixes`]).
pub(crate) fn index_name(collection: &str, field: &str, kind: FieldIndex) -> String {
    let [unique, relation] = index_prefixes(collection);
    let prefix = match kind {
        FieldIndex::Unique => unique,
        FieldIndex::Relation => relation,
    };
    format!("{prefix}{:016x}", super::fnv1a(field.bytes()))
}

/// The prefixes of all of one collection's field indexes.
pub(crate) fn index_prefixes(collection: &str) -> [String; 2] {
    let h = super::fnv1a(collection.bytes());
    [format!("uq_{h:016x}_"), format!("ix_{h:016x}_")]
}

/// The field indexes `spec` asks for, as (name, `CREATE INDEX IF NOT EXISTS`). Each is
/// a partial expression index on `data -> 'field'` over the collection's non-null
/// values: a unique one makes the database refuse a duplicate whichever node writes it
/// (JSON null is left out as SQLite's json_extract leaves it out), and the filter
/// compiler writes a lookup by the field (`filter.rs`) so that it implies the index's
/// condition and names its expression.
pub(crate) fn field_index_ddl(spec: &CollectionSpec) -> Vec<(String, String)> {
    crate::sql::field_indexes(spec)
        .map(|(f, kind)| {
            let name = index_name(&spec.name, f, kind);
            // Names are validated identifiers, so interpolation is safe.
            let ddl = format!(
                "CREATE {u}INDEX IF NOT EXISTS \"{name}\" ON records ((data -> '{f}'))
                 WHERE collection = '{c}' AND jsonb_typeof(data -> '{f}') <> 'null'",
                u = if kind == FieldIndex::Unique {
                    "UNIQUE "
                } else {
                    ""
                },
                c = spec.name,
            );
            (name, ddl)
        })
        .collect()
}

/// Creates or upgrades the tables in `schema`; returns the log's epoch.
pub(crate) fn migrate(client: &mut Client, schema: &str) -> Result<String, postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('polyport-migrate:' || $1))",
        &[&schema],
    )?;
    // `IF NOT EXISTS` on a made schema is a notice per table: not worth a log line.
    tx.batch_execute(&format!(
        "SET LOCAL client_min_messages TO warning; CREATE SCHEMA IF NOT EXISTS \"{schema}\"; SET LOCAL search_path TO \"{schema}\";"
    ))?;
    tx.batch_execute(TABLES)?;
    // Collections made before relation fields were indexed get theirs here, once, under
    // the lock (a spec this version cannot read is left to the load that follows).
    for row in tx.query("SELECT spec FROM collections", &[])? {
        if let Ok(spec) = serde_json::from_str::<CollectionSpec>(row.try_get(0)?) {
            for (_, ddl) in field_index_ddl(&spec) {
                tx.batch_execute(&ddl)?;
            }
        }
    }
    let epoch = ulid::Ulid::new().to_string().to_ascii_lowercase();
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('epoch', $1), ('schema_version', $2)
         ON CONFLICT (key) DO NOTHING",
        &[&epoch, &VERSION.to_string()],
    )?;
    let epoch: String = tx
        .query_one("SELECT value FROM meta WHERE key = 'epoch'", &[])?
        .try_get(0)?;
    tx.commit()?;
    Ok(epoch)
}

/// The channel a schema's commits are announced on (`NOTIFY`).
pub(crate) fn channel(schema: &str) -> String {
    format!("polyport_{schema}")
}
