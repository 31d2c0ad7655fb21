//! Records: JSON documents in a collection, with the system fields every face exposes.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::ser::{Serialize, SerializeMap, Serializer};
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

    /// [`Record::to_json`]'s shape serialized straight from the record, with `expand`
    /// (when given) as one more member: what a response body needs, without building a
    /// `Value` first.
    pub fn json<'a>(&'a self, expand: Option<&'a Map<String, Value>>) -> RecordJson<'a> {
        RecordJson {
            record: self,
            expand,
        }
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

/// A record as its JSON object (see [`Record::json`]).
pub struct RecordJson<'a> {
    record: &'a Record,
    expand: Option<&'a Map<String, Value>>,
}

impl Serialize for RecordJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.record;
        let mut m = s.serialize_map(Some(r.data.len() + 5 + usize::from(self.expand.is_some())))?;
        m.serialize_entry("id", &r.id)?;
        m.serialize_entry("collection", &r.collection)?;
        m.serialize_entry("created_at", &format_time(&r.created_at))?;
        m.serialize_entry("updated_at", &format_time(&r.updated_at))?;
        m.serialize_entry("version", &r.version)?;
        let mut expanded = false;
        for (k, v) in &r.data {
            match (k.as_str(), self.expand) {
                // Where `v["expand"] = …` would have put it: in the document's own slot.
                ("expand", Some(e)) => {
                    m.serialize_entry(k, e)?;
                    expanded = true;
                }
                _ => m.serialize_entry(k, v)?,
            }
        }
        if let (Some(e), false) = (self.expand, expanded) {
            m.serialize_entry("expand", e)?;
        }
        m.end()
    }
}

/// Timestamps are stored and rendered in one fixed-width UTC format so that string order is
/// time order (filters and sorts on `created_at` compare strings):
/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`. Written by hand (chrono's formatter is a tenth of a
/// REST GET's cost); years outside 0..=9999 go through chrono.
pub fn format_time(t: &DateTime<Utc>) -> String {
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    }
    // A leap second's nanoseconds run past 1e9; chrono prints them the same way.
    let micros = t.nanosecond() / 1000;
    let mut b = [0u8; 27];
    let mut put = |at: usize, v: u32, width: usize| {
        let mut v = v;
        for i in (0..width).rev() {
            b[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year as u32, 4);
    put(5, t.month(), 2);
    put(8, t.day(), 2);
    put(11, t.hour(), 2);
    put(14, t.minute(), 2);
    put(17, t.second(), 2);
    if micros > 999_999 {
        return t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    }
    put(20, micros, 6);
    b[4] = b'-';
    b[7] = b'-';
    b[10] = b'T';
    b[13] = b':';
    b[16] = b':';
    b[19] = b'.';
    b[26] = b'Z';
    b.iter().map(|&c| c as char).collect()
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

#[cfg(test)]
mod json_tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_fast_time_format_is_chronos() {
        let samples = [
            Utc.with_ymd_and_hms(2026, 12, 4, 19, 5, 9).unwrap(),
            Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap()
                + chrono::Duration::microseconds(999_999),
            Utc.with_ymd_and_hms(2024, 2, 29, 7, 8, 9).unwrap()
                + chrono::Duration::nanoseconds(123_456_789),
            Utc::now(),
        ];
        for t in samples {
            assert_eq!(
                format_time(&t),
                t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
            );
        }
    }

    #[test]
    fn serializing_a_record_matches_to_json() {
        let mut data = Map::new();
        data.insert("title".into(), "hi".into());
        data.insert("expand".into(), 1.into());
        data.insert("n".into(), 2.into());
        let r = Record {
            collection: "posts".into(),
            id: "a".into(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            version: 3,
            data,
        };
        assert_eq!(
            serde_json::to_string(&r.json(None)).unwrap(),
            r.to_json().to_string()
        );
        let mut e = Map::new();
        e.insert("author".into(), serde_json::json!({"id": "u"}));
        let mut v = r.to_json();
        v["expand"] = Value::Object(e.clone());
        assert_eq!(
            serde_json::to_string(&r.json(Some(&e))).unwrap(),
            v.to_string()
        );
    }
}
