//! The service generated from the collections: its operations (what a body element
//! names) and the WSDL 1.1 that describes them, built together so they cannot disagree.
//!
//! Document/literal wrapped, WS-I Basic Profile 1.1 style: each operation's input and
//! output is one element named after it (`GetPost` / `GetPostResponse`), elements are
//! qualified in [`TNS`], every operation may fail with the one `fault` element, and two
//! bindings (SOAP 1.1 and SOAP 1.2) share the port type.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use polyport_core::naming::{TypeNames, assign_type_names};
use polyport_core::schema::{Collection, CollectionMap, FieldDef, FieldType};

use crate::TNS;
use crate::xml::Out;

/// What an operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Get,
    List,
    Create,
    Update,
    Delete,
}

/// One operation of the service.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// A record operation on a collection (its name).
    Record(Kind, String),
    /// Publish on a topic.
    Publish,
}

/// A collection as the service types it.
#[derive(Clone, Debug)]
pub(crate) struct Typed {
    pub(crate) coll: Arc<Collection>,
    pub(crate) names: TypeNames,
}

impl Typed {
    pub(crate) fn schemaless(&self) -> bool {
        self.coll.spec.fields.is_none()
    }
}

/// Type and element names Polyport defines itself; a collection never takes them.
const RESERVED: &[&str] = &["Publish", "PublishResponse", "Fault", "FieldFault", "fault"];

fn derived(m: &str, p: &str) -> Vec<String> {
    let mut v = vec![m.to_string()];
    for op in op_names(m, p) {
        v.push(format!("{op}Response"));
        v.push(op);
    }
    v
}

fn op_names(m: &str, p: &str) -> [String; 5] {
    [
        format!("Get{m}"),
        format!("List{p}"),
        format!("Create{m}"),
        format!("Update{m}"),
        format!("Delete{m}"),
    ]
}

const KINDS: [Kind; 5] = [
    Kind::Get,
    Kind::List,
    Kind::Create,
    Kind::Update,
    Kind::Delete,
];

/// The operations and the WSDL for one snapshot of the collections.
pub(crate) struct Service {
    pub(crate) ops: HashMap<String, Op>,
    pub(crate) types: BTreeMap<String, Typed>,
    /// The WSDL with [`ADDRESS`] where the endpoint's URL goes.
    wsdl: String,
}

/// Stands for the endpoint URL in the stored WSDL; replaced per request, since the
/// address a client used (host, port, proxy) is only known then.
const ADDRESS: &str = "\u{0}ADDRESS\u{0}";

impl Service {
    pub(crate) fn build(colls: &CollectionMap) -> Self {
        let names = assign_type_names(colls.keys().map(String::as_str), RESERVED, derived);
        let mut ops = HashMap::new();
        let mut types = BTreeMap::new();
        for (c, n) in names {
            let Some(coll) = colls.get(&c) else { continue };
            for (op, kind) in op_names(&n.singular, &n.plural).into_iter().zip(KINDS) {
                ops.insert(op, Op::Record(kind, c.clone()));
            }
            types.insert(
                c,
                Typed {
                    coll: coll.clone(),
                    names: n,
                },
            );
        }
        ops.insert("Publish".to_string(), Op::Publish);
        let wsdl = wsdl(&types);
        Self { ops, types, wsdl }
    }

    /// The WSDL, with `address` as both ports' location.
    pub(crate) fn wsdl(&self, address: &str) -> String {
        self.wsdl
            .replace(ADDRESS, &quick_xml::escape::escape(address))
    }

    /// The SOAPAction an operation declares.
    pub(crate) fn action(op: &str) -> String {
        format!("{TNS}#{op}")
    }
}

/// Collections from specs as JSON, for tests and the fuzz target.
#[doc(hidden)]
pub(crate) fn collections(specs: serde_json::Value) -> CollectionMap {
    let specs: Vec<polyport_core::CollectionSpec> =
        serde_json::from_value(specs).unwrap_or_default();
    let now = chrono::Utc::now();
    specs
        .into_iter()
        .map(|spec| {
            let c = Collection {
                spec,
                created_at: now,
                updated_at: now,
            };
            (c.spec.name.clone(), Arc::new(c))
        })
        .collect()
}

/// A service over one typed collection of every field type and one schemaless one.
#[doc(hidden)]
pub(crate) fn fuzz_service() -> Service {
    Service::build(&collections(serde_json::json!([
        {"name": "items", "fields": [
            {"name": "t", "type": "text"}, {"name": "n", "type": "number"},
            {"name": "i", "type": "integer"}, {"name": "b", "type": "bool"},
            {"name": "d", "type": "datetime"}, {"name": "j", "type": "json"},
            {"name": "a", "type": "array", "items": {"type": "integer"}},
        ]},
        {"name": "notes"},
    ])))
}

/// The XSD type of a scalar field (JSON and nested arrays travel as JSON text).
pub(crate) fn xsd_type(t: &FieldType) -> &'static str {
    match t {
        FieldType::Text | FieldType::Relation { .. } | FieldType::Json => "xsd:string",
        FieldType::Number => "xsd:double",
        FieldType::Integer => "xsd:long",
        FieldType::Bool => "xsd:boolean",
        FieldType::Datetime => "xsd:dateTime",
        FieldType::Array { items } => match **items {
            FieldType::Array { .. } => "xsd:string",
            ref t => xsd_type(t),
        },
    }
}

struct El<'a> {
    name: &'a str,
    ty: &'a str,
    min: u8,
    many: bool,
    nillable: bool,
    doc: Option<&'a str>,
}

fn el<'a>(name: &'a str, ty: &'a str, min: u8) -> El<'a> {
    El {
        name,
        ty,
        min,
        many: false,
        nillable: false,
        doc: None,
    }
}

fn write_el(o: &mut Out, e: &El<'_>) {
    let min = e.min.to_string();
    let mut attrs = vec![("name", e.name), ("type", e.ty)];
    if e.min != 1 {
        attrs.push(("minOccurs", &min));
    }
    if e.many {
        attrs.push(("maxOccurs", "unbounded"));
    }
    if e.nillable {
        attrs.push(("nillable", "true"));
    }
    match e.doc {
        Some(d) => {
            o.open("xsd:element", &attrs)
                .open("xsd:annotation", &[])
                .leaf("xsd:documentation", d)
                .close("xsd:annotation")
                .close("xsd:element");
        }
        None => {
            let _ = write!(o.0, "<xsd:element");
            for (k, v) in attrs {
                let _ = write!(o.0, " {k}=\"{v}\"");
            }
            o.0.push_str("/>");
        }
    }
}

fn sequence(o: &mut Out, els: &[El<'_>]) {
    o.open("xsd:sequence", &[]);
    for e in els {
        write_el(o, e);
    }
    o.close("xsd:sequence");
}

/// A wrapper element with an anonymous type.
fn wrapper(o: &mut Out, name: &str, els: &[El<'_>]) {
    o.open("xsd:element", &[("name", name)])
        .open("xsd:complexType", &[]);
    sequence(o, els);
    o.close("xsd:complexType").close("xsd:element");
}

/// A declared field as an element; `min` 0 or 1, `nillable` for updates (nil clears).
fn field_el(f: &FieldDef, min: u8, nillable: bool) -> El<'_> {
    El {
        name: &f.name,
        ty: xsd_type(&f.ty),
        min,
        many: matches!(f.ty, FieldType::Array { .. }),
        nillable,
        doc: f.description.as_deref(),
    }
}

const DOCUMENT_DOC: &str = "The record's document as a JSON object (the collection is schemaless).";

fn record_type(o: &mut Out, t: &Typed) {
    let mut els = vec![
        el("id", "xsd:string", 1),
        el("created_at", "xsd:dateTime", 1),
        el("updated_at", "xsd:dateTime", 1),
        el("version", "xsd:long", 1),
    ];
    if t.schemaless() {
        els.push(El {
            doc: Some(DOCUMENT_DOC),
            ..el("document", "xsd:string", 1)
        });
    }
    els.extend(t.coll.fields().iter().map(|f| field_el(f, 0, false)));
    o.open("xsd:complexType", &[("name", &t.names.singular)]);
    if let Some(d) = &t.coll.spec.description {
        o.open("xsd:annotation", &[])
            .leaf("xsd:documentation", d)
            .close("xsd:annotation");
    }
    sequence(o, &els);
    o.close("xsd:complexType");
}

fn record_elements(o: &mut Out, t: &Typed) {
    let (m, p) = (&t.names.singular, &t.names.plural);
    let rec = format!("tns:{m}");
    let record = [el("record", &rec, 1)];
    let doc = |min| El {
        doc: Some(DOCUMENT_DOC),
        ..el("document", "xsd:string", min)
    };
    wrapper(o, &format!("Get{m}"), &[el("id", "xsd:string", 1)]);
    wrapper(o, &format!("Get{m}Response"), &record);
    wrapper(
        o,
        &format!("List{p}"),
        &[
            El {
                doc: Some(
                    "A filter in Polyport's filter language, e.g. title ~ \"hello\" && version > 1.",
                ),
                ..el("filter", "xsd:string", 0)
            },
            El {
                doc: Some("Comma-separated fields, '-' for descending, e.g. -created_at,title."),
                ..el("sort", "xsd:string", 0)
            },
            el("limit", "xsd:int", 0),
            El {
                doc: Some("next_cursor of the previous page."),
                ..el("cursor", "xsd:string", 0)
            },
            el("count", "xsd:boolean", 0),
        ],
    );
    wrapper(
        o,
        &format!("List{p}Response"),
        &[
            El {
                many: true,
                ..el("records", &rec, 0)
            },
            el("next_cursor", "xsd:string", 0),
            el("total", "xsd:long", 0),
        ],
    );
    let mut create = vec![el("id", "xsd:string", 0)];
    let mut update = vec![
        el("id", "xsd:string", 1),
        El {
            doc: Some("Fail with version_mismatch unless the record is at this version."),
            ..el("expected_version", "xsd:long", 0)
        },
    ];
    if t.schemaless() {
        create.push(doc(1));
        update.push(El {
            doc: Some("A JSON merge patch applied to the document."),
            ..doc(0)
        });
    }
    for f in t.coll.fields() {
        let required = u8::from(f.required && f.default.is_none());
        create.push(field_el(f, required, false));
        update.push(field_el(f, 0, true));
    }
    wrapper(o, &format!("Create{m}"), &create);
    wrapper(o, &format!("Create{m}Response"), &record);
    wrapper(o, &format!("Update{m}"), &update);
    wrapper(o, &format!("Update{m}Response"), &record);
    wrapper(
        o,
        &format!("Delete{m}"),
        &[
            el("id", "xsd:string", 1),
            el("expected_version", "xsd:long", 0),
        ],
    );
    wrapper(o, &format!("Delete{m}Response"), &record);
}

fn common_elements(o: &mut Out) {
    wrapper(
        o,
        "Publish",
        &[
            El {
                doc: Some("A topic such as sensors/temperature."),
                ..el("topic", "xsd:string", 1)
            },
            El {
                doc: Some("The payload as text."),
                ..el("data", "xsd:string", 0)
            },
            El {
                doc: Some("The payload as bytes, instead of data."),
                ..el("data_base64", "xsd:base64Binary", 0)
            },
            el("content_type", "xsd:string", 0),
            el("type", "xsd:string", 0),
            El {
                doc: Some("false: memory only, no sequence."),
                ..el("durable", "xsd:boolean", 0)
            },
        ],
    );
    wrapper(
        o,
        "PublishResponse",
        &[
            el("id", "xsd:string", 1),
            el("sequence", "xsd:long", 0),
            el("topic", "xsd:string", 1),
        ],
    );
    o.open("xsd:complexType", &[("name", "FieldFault")]);
    sequence(
        o,
        &[
            el("name", "xsd:string", 1),
            el("rule", "xsd:string", 1),
            el("message", "xsd:string", 1),
        ],
    );
    o.close("xsd:complexType");
    o.open("xsd:complexType", &[("name", "Fault")]);
    sequence(
        o,
        &[
            El {
                doc: Some(
                    "validation_failed, record_not_found, unique_violation, version_mismatch, invalid_filter, …",
                ),
                ..el("code", "xsd:string", 1)
            },
            el("message", "xsd:string", 1),
            El {
                many: true,
                ..el("field", "tns:FieldFault", 0)
            },
        ],
    );
    o.close("xsd:complexType");
    write_el(o, &el("fault", "tns:Fault", 1));
}

fn wsdl(types: &BTreeMap<String, Typed>) -> String {
    let mut ops: Vec<(String, Option<String>)> = Vec::new();
    for t in types.values() {
        let c = t.coll.name();
        let docs = [
            format!("One record of {c}."),
            format!("A page of {c}, filtered and sorted."),
            format!("Creates a record in {c}."),
            format!("Sets the given fields of a record in {c} (xsi:nil clears one)."),
            format!("Deletes a record of {c}, returning it as it was."),
        ];
        for (op, d) in op_names(&t.names.singular, &t.names.plural)
            .into_iter()
            .zip(docs)
        {
            ops.push((op, Some(d)));
        }
    }
    ops.push((
        "Publish".into(),
        Some("Publishes a message on a topic, seen by every protocol's subscribers.".into()),
    ));

    let mut o = Out::default();
    o.raw(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    o.open(
        "wsdl:definitions",
        &[
            ("name", "Polyport"),
            ("targetNamespace", TNS),
            ("xmlns:tns", TNS),
            ("xmlns:wsdl", "http://schemas.xmlsoap.org/wsdl/"),
            ("xmlns:soap", "http://schemas.xmlsoap.org/wsdl/soap/"),
            ("xmlns:soap12", "http://schemas.xmlsoap.org/wsdl/soap12/"),
            ("xmlns:xsd", "http://www.w3.org/2001/XMLSchema"),
        ],
    );
    o.leaf(
        "wsdl:documentation",
        "Polyport's records and topics; generated from the collections and regenerated when they change.",
    );
    o.open("wsdl:types", &[]).open(
        "xsd:schema",
        &[
            ("targetNamespace", TNS),
            ("elementFormDefault", "qualified"),
        ],
    );
    for t in types.values() {
        record_type(&mut o, t);
        record_elements(&mut o, t);
    }
    common_elements(&mut o);
    o.close("xsd:schema").close("wsdl:types");

    for (op, _) in &ops {
        for (msg, el) in [
            (format!("{op}Request"), op.clone()),
            (format!("{op}Response"), format!("{op}Response")),
        ] {
            o.open("wsdl:message", &[("name", &msg)]);
            let _ = write!(o.0, r#"<wsdl:part name="parameters" element="tns:{el}"/>"#);
            o.close("wsdl:message");
        }
    }
    o.raw(r#"<wsdl:message name="Fault"><wsdl:part name="fault" element="tns:fault"/></wsdl:message>"#);

    o.open("wsdl:portType", &[("name", "PolyportPortType")]);
    for (op, doc) in &ops {
        o.open("wsdl:operation", &[("name", op)]);
        if let Some(d) = doc {
            o.leaf("wsdl:documentation", d);
        }
        let _ = write!(
            o.0,
            r#"<wsdl:input message="tns:{op}Request"/><wsdl:output message="tns:{op}Response"/><wsdl:fault name="Fault" message="tns:Fault"/>"#
        );
        o.close("wsdl:operation");
    }
    o.close("wsdl:portType");

    for (binding, p) in [("PolyportSoap11", "soap"), ("PolyportSoap12", "soap12")] {
        o.open(
            "wsdl:binding",
            &[("name", binding), ("type", "tns:PolyportPortType")],
        );
        let _ = write!(
            o.0,
            r#"<{p}:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>"#
        );
        for (op, _) in &ops {
            o.open("wsdl:operation", &[("name", op)]);
            let _ = write!(
                o.0,
                r#"<{p}:operation soapAction="{}" style="document"/><wsdl:input><{p}:body use="literal"/></wsdl:input><wsdl:output><{p}:body use="literal"/></wsdl:output><wsdl:fault name="Fault"><{p}:fault name="Fault" use="literal"/></wsdl:fault>"#,
                Service::action(op)
            );
            o.close("wsdl:operation");
        }
        o.close("wsdl:binding");
    }
    o.open("wsdl:service", &[("name", "Polyport")]);
    for (binding, p) in [("PolyportSoap11", "soap"), ("PolyportSoap12", "soap12")] {
        let _ = write!(
            o.0,
            r#"<wsdl:port name="{binding}" binding="tns:{binding}"><{p}:address location="{ADDRESS}"/></wsdl:port>"#
        );
    }
    o.close("wsdl:service").close("wsdl:definitions");
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{Limits, parse};

    #[test]
    fn the_wsdl_is_well_formed_and_names_every_operation() {
        let s = Service::build(&collections(serde_json::json!([
            {"name": "posts", "fields": [
                {"name": "title", "type": "text", "required": true},
                {"name": "tags", "type": "array", "items": {"type": "text"}},
            ]},
            {"name": "notes"},
            {"name": "fault"},
        ])));
        let w = s.wsdl("http://h/soap");
        let doc = parse(
            &w,
            &Limits {
                max_elements: 1_000_000,
                ..Limits::default()
            },
        )
        .unwrap();
        assert!(
            doc.name
                .is("http://schemas.xmlsoap.org/wsdl/", "definitions")
        );
        for op in [
            "GetPost",
            "ListPosts",
            "CreatePost",
            "UpdatePost",
            "DeletePost",
            "GetNote",
            "Publish",
        ] {
            assert!(s.ops.contains_key(op), "{op}");
            assert!(w.contains(&format!("soapAction=\"{TNS}#{op}\"")), "{op}");
        }
        assert!(
            s.ops.contains_key("GetFaultRecord"),
            "a collection never takes a built-in name"
        );
        assert!(
            w.contains(r#"<xsd:element name="title" type="xsd:string"/>"#),
            "required on create"
        );
        assert!(w.contains(r#"name="tags" type="xsd:string" minOccurs="0" maxOccurs="unbounded""#));
        assert!(w.contains(r#"location="http://h/soap""#));
    }
}
