//! Records as XML and request elements as JSON documents, by the collection's field
//! types: the one place XSD lexical forms meet JSON values.

use polyport_core::Record;
use polyport_core::record::format_time;
use polyport_core::schema::FieldType;
use serde_json::{Map, Number, Value};

use crate::TNS;
use crate::fault::Fault;
use crate::service::Typed;
use crate::xml::{Element, Out};

const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// Writes `r` as `<{tag}>` with its system fields, then its declared fields in order
/// (the XSD's sequence). Values that no longer fit the declared type (written before a
/// schema change) are left out rather than breaking the response.
pub(crate) fn write_record(o: &mut Out, tag: &str, t: &Typed, r: &Record) {
    o.open(tag, &[])
        .leaf("id", &r.id)
        .leaf("created_at", &format_time(&r.created_at))
        .leaf("updated_at", &format_time(&r.updated_at))
        .leaf("version", &r.version.to_string());
    if t.schemaless() {
        o.leaf("document", &Value::Object(r.data.clone()).to_string());
    }
    for f in t.coll.fields() {
        match (&f.ty, r.data.get(&f.name)) {
            (_, None | Some(Value::Null)) => {}
            (FieldType::Array { items }, Some(Value::Array(a))) => {
                for v in a {
                    if let Some(s) = lexical(items, v) {
                        o.leaf(&f.name, &s);
                    }
                }
            }
            (ty, Some(v)) => {
                if let Some(s) = lexical(ty, v) {
                    o.leaf(&f.name, &s);
                }
            }
        }
    }
    o.close(tag);
}

/// A JSON value in the XSD lexical form of its field type.
fn lexical(t: &FieldType, v: &Value) -> Option<String> {
    match (t, v) {
        (FieldType::Json | FieldType::Array { .. }, v) => Some(v.to_string()),
        (FieldType::Text | FieldType::Datetime | FieldType::Relation { .. }, Value::String(s)) => {
            Some(s.clone())
        }
        (FieldType::Relation { .. }, Value::Number(n)) => Some(n.to_string()),
        (FieldType::Number, Value::Number(n)) => Some(n.to_string()),
        (FieldType::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        (FieldType::Bool, Value::Bool(b)) => Some(b.to_string()),
        _ => None,
    }
}

/// Children of a request element in the service namespace (or unqualified, as
/// hand-written clients often send them).
fn params(req: &Element) -> impl Iterator<Item = &Element> {
    req.children
        .iter()
        .filter(|c| c.name.ns.as_deref().is_none_or(|n| n == TNS))
}

/// The text of a single-valued parameter.
pub(crate) fn param<'a>(req: &'a Element, name: &str) -> Result<Option<&'a str>, Fault> {
    let mut found = params(req).filter(|c| c.name.local == name);
    let first = found.next();
    if found.next().is_some() {
        return Err(Fault::field(
            "invalid_request",
            name,
            "given more than once",
        ));
    }
    Ok(first.filter(|e| !is_nil(e)).map(|e| e.text.as_str()))
}

/// A required parameter.
pub(crate) fn required<'a>(req: &'a Element, name: &str) -> Result<&'a str, Fault> {
    param(req, name)?.ok_or_else(|| Fault::field("invalid_request", name, "is required"))
}

/// An `xsd:long` / `xsd:int` parameter.
pub(crate) fn number_param(req: &Element, name: &str) -> Result<Option<u64>, Fault> {
    param(req, name)?
        .map(|s| {
            s.trim().parse::<u64>().map_err(|_| {
                Fault::field(
                    "invalid_value",
                    name,
                    format!("expected a whole number, got '{s}'"),
                )
            })
        })
        .transpose()
}

/// An `xsd:boolean` parameter.
pub(crate) fn bool_param(req: &Element, name: &str) -> Result<Option<bool>, Fault> {
    param(req, name)?
        .map(|s| {
            xsd_bool(s).ok_or_else(|| {
                Fault::field(
                    "invalid_value",
                    name,
                    format!("expected true or false, got '{s}'"),
                )
            })
        })
        .transpose()
}

fn xsd_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

fn is_nil(e: &Element) -> bool {
    e.attr_ns(XSI_NS, "nil")
        .is_some_and(|v| matches!(v.trim(), "true" | "1"))
}

/// The document a create or update request carries. `skip` names the operation's own
/// parameters (`id`, `expected_version`). For an update, `xsi:nil` becomes `null`
/// (a merge patch removes the field).
pub(crate) fn document(
    req: &Element,
    t: &Typed,
    skip: &[&str],
) -> Result<Map<String, Value>, Fault> {
    let mut doc = Map::new();
    if t.schemaless() {
        for c in params(req) {
            if !skip.contains(&c.name.local.as_str()) && c.name.local != "document" {
                return Err(unknown(t, &c.name.local));
            }
        }
        return match param(req, "document")? {
            None => Ok(doc),
            Some(s) => match serde_json::from_str::<Value>(s) {
                Ok(Value::Object(m)) => Ok(m),
                _ => Err(Fault::field(
                    "invalid_value",
                    "document",
                    "expected a JSON object",
                )),
            },
        };
    }
    for c in params(req) {
        let name = c.name.local.as_str();
        if skip.contains(&name) {
            continue;
        }
        let f = t.coll.field(name).ok_or_else(|| unknown(t, name))?;
        let v = if is_nil(c) {
            Value::Null
        } else {
            match &f.ty {
                FieldType::Array { items } => scalar(items, &c.text, name)?,
                ty => scalar(ty, &c.text, name)?,
            }
        };
        match (&f.ty, doc.get_mut(name)) {
            (FieldType::Array { .. }, Some(Value::Array(a))) => a.push(v),
            (FieldType::Array { .. }, None) if !v.is_null() => {
                doc.insert(name.to_string(), Value::Array(vec![v]));
            }
            (_, Some(_)) => {
                return Err(Fault::field(
                    "invalid_request",
                    name,
                    "given more than once",
                ));
            }
            (_, None) => {
                doc.insert(name.to_string(), v);
            }
        }
    }
    Ok(doc)
}

fn unknown(t: &Typed, name: &str) -> Fault {
    Fault::field(
        "invalid_request",
        name,
        format!("is not a field of {}", t.names.singular),
    )
}

/// One value from its XSD lexical form.
fn scalar(t: &FieldType, s: &str, field: &str) -> Result<Value, Fault> {
    let bad = |what: &str| {
        Fault::field(
            "invalid_value",
            field,
            format!("expected {what}, got '{s}'"),
        )
    };
    match t {
        FieldType::Text | FieldType::Datetime | FieldType::Relation { .. } => {
            Ok(Value::String(s.to_string()))
        }
        FieldType::Integer => s
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| bad("an integer")),
        FieldType::Number => {
            let s = s.trim();
            if let Ok(i) = s.parse::<i64>() {
                return Ok(Value::from(i));
            }
            s.parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| bad("a finite number"))
        }
        FieldType::Bool => xsd_bool(s)
            .map(Value::Bool)
            .ok_or_else(|| bad("true or false")),
        FieldType::Json | FieldType::Array { .. } => {
            serde_json::from_str(s).map_err(|_| bad("JSON text"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{Service, collections};
    use crate::xml::{Limits, parse};

    fn typed() -> Typed {
        let map = collections(serde_json::json!([{
            "name": "items", "fields": [
                {"name": "n", "type": "integer"},
                {"name": "x", "type": "number"},
                {"name": "ok", "type": "bool"},
                {"name": "meta", "type": "json"},
                {"name": "tags", "type": "array", "items": {"type": "text"}},
            ]
        }]));
        Service::build(&map).types["items"].clone()
    }

    fn req(xml: &str) -> Element {
        parse(xml, &Limits::default()).unwrap()
    }

    #[test]
    fn typed_elements_become_json() {
        let t = typed();
        let e = req(&format!(
            r#"<CreateItem xmlns="{TNS}"><id>a</id><n>-3</n><x>2.5</x><ok>1</ok><meta>{{"k":[1]}}</meta><tags>a</tags><tags>b</tags></CreateItem>"#
        ));
        let d = document(&e, &t, &["id"]).unwrap();
        assert_eq!(
            Value::Object(d),
            serde_json::json!({"n": -3, "x": 2.5, "ok": true, "meta": {"k": [1]}, "tags": ["a", "b"]})
        );
    }

    #[test]
    fn wrong_types_and_unknown_fields_name_the_field() {
        let t = typed();
        for (body, field) in [
            ("<n>three</n>", "n"),
            ("<ok>yes</ok>", "ok"),
            ("<meta>{</meta>", "meta"),
            ("<nope>1</nope>", "nope"),
            ("<n>1</n><n>2</n>", "n"),
        ] {
            let e = req(&format!("<U>{body}</U>"));
            let f = document(&e, &t, &[]).unwrap_err();
            assert_eq!(f.fields[0].name, field, "{body}");
        }
        let nil =
            req(r#"<U xmlns:i="http://www.w3.org/2001/XMLSchema-instance"><n i:nil="true"/></U>"#);
        assert_eq!(document(&nil, &t, &[]).unwrap()["n"], Value::Null);
    }

    #[test]
    fn records_come_out_in_the_schema_order() {
        let t = typed();
        let now = chrono::Utc::now();
        let r = Record {
            collection: "items".into(),
            id: "a".into(),
            created_at: now,
            updated_at: now,
            version: 2,
            data: serde_json::from_value(
                serde_json::json!({"tags": ["x", "y"], "n": 1, "ok": "not a bool"}),
            )
            .unwrap(),
        };
        let mut o = Out::default();
        write_record(&mut o, "record", &t, &r);
        let e = req(&o.0);
        let names: Vec<_> = e.children.iter().map(|c| c.name.local.as_str()).collect();
        assert_eq!(
            names,
            [
                "id",
                "created_at",
                "updated_at",
                "version",
                "n",
                "tags",
                "tags"
            ]
        );
    }
}
