//! Records: JSON documents in a collection, with the system fields every face exposes.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::error::HubError;

/// System field names; they live beside the document, never inside it.
pub const SYSTEM_FIELDS: &[&str] = &["id", "collection", "created_at", "updated_at", "version"];

/// Longest record id accepted.
pub const MAX_ID_LEN: usize = 128;

/// A stored record.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The collection it belongs to.
    pub collection: String,
    /// Its id: server-generated ULID or client-given.
    pub id: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last written.
    pub updated_at: DateTime<Utc>,
    /// Starts at 1 and grows by one on every write; the ETag and optimistic-lock token.
    pub version: u64,
    /// The document, without system fields.
    pub data: Map<String, Value>,
}

impl Record {
    /// The flat JSON shape every face uses: system fields first, then the document.
    pub fn to_json(&self) -> Value {
        let mut m = Map::with_capacity(self.data.len() + 5);
        m.insert("id".into(), self.id.clone().into());
        m.insert("collection".into(), self.collection.clone().into());
        m.insert("created_at".into(), format_time(&self.created_at).into());
        m.insert("updated_at".into(), format_time(&self.updated_at).into());
        m.insert("version".into(), self.version.into());
        for (k, v) in &self.data {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }

    /// Looks up a system field or a (possibly nested) document path, as filters see it.
    pub fn lookup(&self, path: &[String]) -> Option<Value> {
        let (first, rest) = path.split_first()?;
        if rest.is_empty() {
            match first.as_str() {
                "id" => return Some(self.id.clone().into()),
                "collection" => return Some(self.collection.clone().into()),
                "created_at" => return Some(format_time(&self.created_at).into()),
                "updated_at" => return Some(format_time(&self.updated_at).into()),
                "version" => return Some(self.version.into()),
                _ => {}
            }
        }
        let mut cur = self.data.get(first.as_str())?;
        for seg in rest {
            cur = match cur {
                Value::Object(o) => o.get(seg.as_str())?,
                Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(cur.clone())
    }
}

/// Timestamps are stored and rendered in one fixed-width UTC format so that string order is
/// time order (filters and sorts on `created_at` compare strings).
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Parses a timestamp in [`format_time`]'s format (or any RFC 3339 form).
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Checks a record id: 1–128 of `A–Z a–z 0–9 _ -`, so it is safe in a topic segment, a
/// URL path and every protocol's naming without escaping.
pub fn validate_id(id: &str) -> Result<(), HubError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(HubError::InvalidId(id.chars().take(200).collect()))
    }
}

/// A new sortable id.
pub fn new_id() -> String {
    ulid::Ulid::new().to_string().to_ascii_lowercase()
}

/// RFC 7396 JSON Merge Patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7396_examples() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[1]}), json!({"a":[2]}), json!({"a":[2]})),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
        ];
        for (mut t, p, want) in cases {
            merge_patch(&mut t, &p);
            assert_eq!(t, want);
        }
    }

    #[test]
    fn ids() {
        assert!(validate_id("123").is_ok());
        assert!(validate_id("01jabc-x_y").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("a/b").is_err());
        assert!(validate_id("a.b").is_err());
        assert!(validate_id(&"x".repeat(129)).is_err());
        let a = new_id();
        assert!(validate_id(&a).is_ok());
    }
}
