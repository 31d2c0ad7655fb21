//! Collections and their optional schemas.
//!
//! The schema is the single source the typed faces (OpenAPI now; GraphQL, protobuf and
//! WSDL later) are generated from, so validation lives here, next to the types, and every
//! write path calls the same [`Collection::validate`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::record::{SYSTEM_FIELDS, parse_time};

/// A snapshot of all collections by name.
pub type CollectionMap = std::collections::BTreeMap<String, std::sync::Arc<Collection>>;

/// The type of a field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FieldType {
    /// A UTF-8 string.
    Text,
    /// Any JSON number.
    Number,
    /// A whole number (i64).
    Integer,
    /// true/false.
    Bool,
    /// An RFC 3339 timestamp string.
    Datetime,
    /// Any JSON value.
    Json,
    /// The id of a record in another collection.
    Relation {
        /// Target collection.
        collection: String,
    },
    /// A list of values of one type.
    Array {
        /// Element type.
        items: Box<FieldType>,
    },
}

impl FieldType {
    /// A short name used in error messages.
    pub fn name(&self) -> String {
        match self {
            FieldType::Text => "text".into(),
            FieldType::Number => "number".into(),
            FieldType::Integer => "integer".into(),
            FieldType::Bool => "bool".into(),
            FieldType::Datetime => "datetime".into(),
            FieldType::Json => "json".into(),
            FieldType::Relation { collection } => format!("relation to {collection}"),
            FieldType::Array { items } => format!("array of {}", items.name()),
        }
    }

    fn check(&self, v: &Value, rel: &mut Vec<(String, String)>) -> bool {
        match (self, v) {
            (FieldType::Text, Value::String(_)) => true,
            (FieldType::Number, Value::Number(_)) => true,
            (FieldType::Integer, Value::Number(n)) => n.is_i64() || n.is_u64(),
            (FieldType::Bool, Value::Bool(_)) => true,
            (FieldType::Datetime, Value::String(s)) => parse_time(s).is_some(),
            (FieldType::Json, _) => true,
            (FieldType::Relation { collection }, Value::String(s)) => {
                rel.push((collection.clone(), s.clone()));
                true
            }
            (FieldType::Relation { collection }, Value::Number(n)) if n.is_u64() => {
                rel.push((collection.clone(), n.to_string()));
                true
            }
            (FieldType::Array { items }, Value::Array(a)) => a.iter().all(|x| items.check(x, rel)),
            _ => false,
        }
    }

    /// Relation ids are strings: a numeric one (accepted as given, e.g. `123`) is stored
    /// as `"123"`, so filters and reverse relations (`author = "123"`) find it.
    fn canonicalize(&self, v: &mut Value) {
        match self {
            FieldType::Relation { .. } => {
                if let Some(n) = v.as_u64() {
                    *v = Value::String(n.to_string());
                }
            }
            FieldType::Array { items } => {
                if let Some(a) = v.as_array_mut() {
                    a.iter_mut().for_each(|x| items.canonicalize(x));
                }
            }
            _ => {}
        }
    }

    /// Relation targets, including through arrays.
    pub fn relation_target(&self) -> Option<&str> {
        match self {
            FieldType::Relation { collection } => Some(collection),
            FieldType::Array { items } => items.relation_target(),
            _ => None,
        }
    }
}

/// One field of a collection schema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldDef {
    /// Field name: an identifier, not a system field.
    pub name: String,
    /// Its type.
    #[serde(flatten)]
    pub ty: FieldType,
    /// Must be present and non-null.
    #[serde(default)]
    pub required: bool,
    /// No two records may share a value (enforced by the store).
    #[serde(default)]
    pub unique: bool,
    /// Filled in on create when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// Human description, carried into generated API documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// What a client sends to create or replace a collection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionSpec {
    /// Collection name (identifier, 1–64 chars).
    pub name: String,
    /// Typed fields; absent means schemaless.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<FieldDef>>,
    /// With a schema: accept fields that are not declared (default false).
    #[serde(default)]
    pub additional_fields: bool,
    /// Human description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Who may list, view, create, update and delete which records; absent: every
    /// caller the policy lets in (see [`crate::rules`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<crate::rules::RuleSpec>,
}

/// A collection as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Collection {
    /// The definition.
    #[serde(flatten)]
    pub spec: CollectionSpec,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its definition last changed.
    pub updated_at: DateTime<Utc>,
}

impl Collection {
    /// The collection's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Declared fields (empty when schemaless).
    pub fn fields(&self) -> &[FieldDef] {
        self.spec.fields.as_deref().unwrap_or(&[])
    }

    /// A declared field by name.
    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.fields().iter().find(|f| f.name == name)
    }

    /// Fields marked unique.
    pub fn unique_fields(&self) -> impl Iterator<Item = &FieldDef> {
        self.fields().iter().filter(|f| f.unique)
    }

    /// Validates (and on create, completes with defaults) a document.
    ///
    /// Returns the relation references `(collection, id)` the caller must check exist,
    /// because existence is a store question answered inside the write transaction.
    pub fn validate(
        &self,
        data: &mut Map<String, Value>,
        apply_defaults: bool,
    ) -> Result<Vec<RelationRef>, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut relations = Vec::new();
        for key in data.keys() {
            if SYSTEM_FIELDS.contains(&key.as_str()) || key == "expand" {
                errors.push(FieldError::new(
                    key,
                    Rule::Reserved,
                    "is a system field and cannot be written",
                ));
            }
        }
        let Some(fields) = &self.spec.fields else {
            return if errors.is_empty() {
                Ok(relations)
            } else {
                Err(errors)
            };
        };
        if !self.spec.additional_fields {
            for key in data.keys() {
                if !fields.iter().any(|f| &f.name == key)
                    && !SYSTEM_FIELDS.contains(&key.as_str())
                    && key != "expand"
                {
                    errors.push(FieldError::new(
                        key,
                        Rule::Unknown,
                        "is not a field of this collection",
                    ));
                }
            }
        }
        for f in fields {
            if apply_defaults
                && !data.contains_key(&f.name)
                && let Some(d) = &f.default
            {
                data.insert(f.name.clone(), d.clone());
            }
            if let Some(v) = data.get_mut(&f.name) {
                f.ty.canonicalize(v);
            }
            match data.get(&f.name) {
                None | Some(Value::Null) => {
                    if f.required {
                        errors.push(FieldError::new(&f.name, Rule::Required, "is required"));
                    }
                }
                Some(v) => {
                    let mut found = Vec::new();
                    let ok = f.ty.check(v, &mut found);
                    relations.extend(found.into_iter().map(|(collection, id)| RelationRef {
                        field: f.name.clone(),
                        collection,
                        id,
                    }));
                    if !ok {
                        errors.push(FieldError::new(
                            &f.name,
                            Rule::Type,
                            format!("must be {}", f.ty.name()),
                        ));
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(relations)
        } else {
            Err(errors)
        }
    }
}

impl CollectionSpec {
    /// Checks the definition itself: names, duplicate fields, defaults of the right type.
    /// Relation targets are checked by the store, which knows the other collections.
    pub fn check(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Some(rules) = &self.rules
            && let Err((kind, e)) = rules.check()
        {
            errors.push(FieldError::new(
                &format!("rules.{}", kind.name()),
                Rule::Format,
                e.to_string(),
            ));
        }
        if !is_identifier(&self.name, 64) {
            errors.push(FieldError::new(
                "name",
                Rule::Format,
                "must start with a letter and contain only letters, digits and _ (at most 64)",
            ));
        }
        if let Some(fields) = &self.fields {
            for (i, f) in fields.iter().enumerate() {
                if !is_identifier(&f.name, 64) {
                    errors.push(FieldError::new(
                        &format!("fields[{i}].name"),
                        Rule::Format,
                        "must start with a letter and contain only letters, digits and _",
                    ));
                }
                if SYSTEM_FIELDS.contains(&f.name.as_str()) || f.name == "expand" {
                    errors.push(FieldError::new(
                        &format!("fields[{i}].name"),
                        Rule::Reserved,
                        "is a system field",
                    ));
                }
                if fields[..i].iter().any(|g| g.name == f.name) {
                    errors.push(FieldError::new(
                        &format!("fields[{i}].name"),
                        Rule::Unique,
                        "is declared twice",
                    ));
                }
                if let Some(d) = &f.default
                    && !f.ty.check(d, &mut Vec::new())
                {
                    errors.push(FieldError::new(
                        &format!("fields[{i}].default"),
                        Rule::Type,
                        format!("must be {}", f.ty.name()),
                    ));
                }
                if f.unique && matches!(f.ty, FieldType::Array { .. } | FieldType::Json) {
                    errors.push(FieldError::new(
                        &format!("fields[{i}].unique"),
                        Rule::Format,
                        "is only supported on scalar fields",
                    ));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// A relation value the store must check exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationRef {
    /// The field holding it.
    pub field: String,
    /// Target collection.
    pub collection: String,
    /// Target id.
    pub id: String,
}

/// `[A-Za-z][A-Za-z0-9_]*`, at most `max` bytes: safe as a GraphQL, protobuf and XML name.
pub fn is_identifier(s: &str, max: usize) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic())
        && s.len() <= max
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// The rule a field broke; stable codes clients can switch on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Missing or null.
    Required,
    /// Wrong JSON type.
    Type,
    /// Value already used by another record.
    Unique,
    /// Not declared in the schema.
    Unknown,
    /// A system field.
    Reserved,
    /// Points at a record that does not exist.
    Relation,
    /// Malformed value.
    Format,
}

/// One validation failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The field (or definition path) at fault.
    pub field: String,
    /// Which rule.
    pub rule: Rule,
    /// Human-readable explanation.
    pub message: String,
}

impl FieldError {
    /// Builds a field error.
    pub fn new(field: &str, rule: Rule, message: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            rule,
            message: format!("{field} {}", message.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn coll(fields: Value) -> Collection {
        let spec: CollectionSpec =
            serde_json::from_value(json!({"name": "posts", "fields": fields})).unwrap();
        spec.check().unwrap();
        Collection {
            spec,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn validates_types_required_defaults_and_unknown() {
        let c = coll(json!([
            {"name": "title", "type": "text", "required": true},
            {"name": "views", "type": "integer", "default": 0},
            {"name": "author", "type": "relation", "collection": "users"},
            {"name": "tags", "type": "array", "items": {"type": "text"}},
        ]));
        let mut ok = json!({"title": "t", "author": "u1", "tags": ["a"]})
            .as_object()
            .cloned()
            .unwrap();
        let rels = c.validate(&mut ok, true).unwrap();
        assert_eq!(rels.len(), 1);
        assert_eq!(
            (
                rels[0].field.as_str(),
                rels[0].collection.as_str(),
                rels[0].id.as_str()
            ),
            ("author", "users", "u1")
        );
        assert_eq!(ok["views"], 0);

        // Numeric relation ids are accepted as given and stored as id strings.
        let c2 = coll(json!([
            {"name": "author", "type": "relation", "collection": "users"},
            {"name": "editors", "type": "array", "items": {"type": "relation", "collection": "users"}},
        ]));
        let mut num = json!({"author": 123, "editors": [7, "u8"]})
            .as_object()
            .cloned()
            .unwrap();
        let rels = c2.validate(&mut num, true).unwrap();
        assert_eq!(num["author"], "123");
        assert_eq!(num["editors"], json!(["7", "u8"]));
        assert_eq!(rels.len(), 3);

        let mut bad = json!({"views": 1.5, "tags": [1], "nope": true, "id": "x"})
            .as_object()
            .cloned()
            .unwrap();
        let errs = c.validate(&mut bad, true).unwrap_err();
        let got: Vec<(&str, Rule)> = errs.iter().map(|e| (e.field.as_str(), e.rule)).collect();
        assert!(got.contains(&("title", Rule::Required)));
        assert!(got.contains(&("views", Rule::Type)));
        assert!(got.contains(&("tags", Rule::Type)));
        assert!(got.contains(&("nope", Rule::Unknown)));
        assert!(got.contains(&("id", Rule::Reserved)));
    }

    #[test]
    fn spec_check_catches_bad_definitions() {
        let spec: CollectionSpec = serde_json::from_value(json!({
            "name": "9bad",
            "fields": [{"name": "a", "type": "text"}, {"name": "a", "type": "bool", "default": 3}]
        }))
        .unwrap();
        let errs = spec.check().unwrap_err();
        assert_eq!(errs.len(), 3);
    }
}
