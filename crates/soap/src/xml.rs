//! A small, safe XML layer over quick-xml's namespace-aware reader: the document as a
//! tree of elements named by (namespace URI, local name), so prefixes never matter.
//!
//! Safety is by refusal, not by configuration: a `<!DOCTYPE …>` is an error (no DTDs,
//! so no external entities and no entity expansion), a reference other than the five
//! predefined entities and character references is an error, and depth, element count,
//! attributes per element and text size are capped before anything is allocated for
//! the next element.

use std::fmt::Write as _;

use quick_xml::NsReader;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{QName, ResolveResult};

/// Caps on what one document may contain.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Deepest element nesting.
    pub max_depth: usize,
    /// Most elements in the document.
    pub max_elements: usize,
    /// Most attributes on one element (namespace declarations included).
    pub max_attributes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: 32,
            max_elements: 100_000,
            max_attributes: 64,
        }
    }
}

/// Why a document was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XmlError {
    /// Not well-formed.
    #[error("malformed XML: {0}")]
    Malformed(String),
    /// A document type declaration.
    #[error("DTDs are not accepted (no DOCTYPE, no entity declarations)")]
    Dtd,
    /// A reference to an entity that is not predefined.
    #[error(
        "undefined entity '&{0};' (only &lt; &gt; &amp; &apos; &quot; and character references are accepted)"
    )]
    Entity(String),
    /// Nested deeper than [`Limits::max_depth`].
    #[error("document nests deeper than {0} elements")]
    TooDeep(usize),
    /// More elements than [`Limits::max_elements`].
    #[error("document has more than {0} elements")]
    TooManyElements(usize),
    /// An element with more attributes than [`Limits::max_attributes`].
    #[error("an element has more than {0} attributes")]
    TooManyAttributes(usize),
}

/// A name in a namespace (`None`: no namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name {
    /// Namespace URI.
    pub ns: Option<String>,
    /// Local part.
    pub local: String,
}

impl Name {
    /// Whether this is `local` in namespace `ns`.
    pub fn is(&self, ns: &str, local: &str) -> bool {
        self.local == local && self.ns.as_deref() == Some(ns)
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.ns {
            Some(ns) => write!(f, "{{{ns}}}{}", self.local),
            None => f.write_str(&self.local),
        }
    }
}

/// One element: its attributes (without namespace declarations), child elements and
/// the text directly inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    /// Its name.
    pub name: Name,
    /// Attributes, namespace declarations left out.
    pub attrs: Vec<(Name, String)>,
    /// Child elements in order.
    pub children: Vec<Element>,
    /// Direct text and CDATA, concatenated.
    pub text: String,
}

impl Element {
    /// An attribute's value by local name, whatever its namespace.
    pub fn attr(&self, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n.local == local)
            .map(|(_, v)| v.as_str())
    }

    /// An attribute in a given namespace.
    pub fn attr_ns(&self, ns: &str, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n.is(ns, local))
            .map(|(_, v)| v.as_str())
    }

    /// The first child with this local name whose namespace is `ns` or none.
    pub fn child(&self, ns: &str, local: &str) -> Option<&Element> {
        self.children
            .iter()
            .find(|c| c.name.local == local && c.name.ns.as_deref().is_none_or(|n| n == ns))
    }
}

/// Parses a whole document into its root element.
pub fn parse(src: &str, limits: &Limits) -> Result<Element, XmlError> {
    let mut reader = NsReader::from_str(src);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| XmlError::Malformed(e.to_string()))?;
        match event {
            Event::Start(ref s) | Event::Empty(ref s) => {
                if root.is_some() {
                    return Err(XmlError::Malformed("content after the root element".into()));
                }
                count += 1;
                if count > limits.max_elements {
                    return Err(XmlError::TooManyElements(limits.max_elements));
                }
                if stack.len() >= limits.max_depth {
                    return Err(XmlError::TooDeep(limits.max_depth));
                }
                let el = element(&reader, s, limits)?;
                if matches!(event, Event::Start(_)) {
                    stack.push(el);
                } else {
                    attach(&mut stack, &mut root, el);
                }
            }
            Event::End(_) => {
                let el = stack
                    .pop()
                    .ok_or_else(|| XmlError::Malformed("unmatched end tag".into()))?;
                attach(&mut stack, &mut root, el);
            }
            Event::Text(t) => {
                let text = t.xml10_content();
                match stack.last_mut() {
                    Some(el) => el.text.push_str(&text),
                    None if text.trim().is_empty() => {}
                    None => {
                        return Err(XmlError::Malformed("text outside the root element".into()));
                    }
                }
            }
            Event::CData(c) => match stack.last_mut() {
                Some(el) => el.text.push_str(&c.xml10_content()),
                None => return Err(XmlError::Malformed("CDATA outside the root element".into())),
            },
            Event::GeneralRef(r) => {
                let ch = match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    Ok(None) => match &*r {
                        "lt" => '<',
                        "gt" => '>',
                        "amp" => '&',
                        "apos" => '\'',
                        "quot" => '"',
                        other => return Err(XmlError::Entity(other.to_string())),
                    },
                    Err(e) => return Err(XmlError::Malformed(e.to_string())),
                };
                match stack.last_mut() {
                    Some(el) => el.text.push(ch),
                    None => {
                        return Err(XmlError::Malformed(
                            "reference outside the root element".into(),
                        ));
                    }
                }
            }
            Event::DocType(_) => return Err(XmlError::Dtd),
            Event::Decl(d) => {
                if let Some(Ok(enc)) = d.encoding() {
                    let enc = enc.to_ascii_lowercase();
                    if enc != "utf-8" && enc != "utf8" {
                        return Err(XmlError::Malformed(format!(
                            "encoding '{enc}' is not supported: send UTF-8"
                        )));
                    }
                }
            }
            Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(XmlError::Malformed(
            "document ends inside an element".into(),
        ));
    }
    root.ok_or_else(|| XmlError::Malformed("no root element".into()))
}

fn attach(stack: &mut [Element], root: &mut Option<Element>, el: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(el),
        None => *root = Some(el),
    }
}

fn resolved(r: ResolveResult<'_>) -> Result<Option<String>, XmlError> {
    match r {
        ResolveResult::Bound(ns) => Ok(Some(ns.0.to_string())),
        ResolveResult::Unbound => Ok(None),
        ResolveResult::Unknown(p) => Err(XmlError::Malformed(format!(
            "namespace prefix '{p}' is not declared"
        ))),
    }
}

fn element(
    reader: &NsReader<&[u8]>,
    s: &BytesStart<'_>,
    limits: &Limits,
) -> Result<Element, XmlError> {
    let (ns, local) = reader.resolver().resolve_element(s.name());
    let name = Name {
        ns: resolved(ns)?,
        local: local.as_ref().to_string(),
    };
    let mut attrs = Vec::new();
    for (i, a) in s.attributes().enumerate() {
        if i >= limits.max_attributes {
            return Err(XmlError::TooManyAttributes(limits.max_attributes));
        }
        let a = a.map_err(|e| XmlError::Malformed(e.to_string()))?;
        let key: QName<'_> = a.key;
        if key.0 == "xmlns" || key.0.starts_with("xmlns:") {
            continue;
        }
        let value =
            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| match e {
                    quick_xml::Error::Escape(
                        quick_xml::escape::EscapeError::UnrecognizedEntity(_, n),
                    ) => XmlError::Entity(n),
                    other => XmlError::Malformed(other.to_string()),
                })?;
        let (ans, alocal) = reader.resolver().resolve_attribute(key);
        attrs.push((
            Name {
                ns: resolved(ans)?,
                local: alocal.as_ref().to_string(),
            },
            value.into_owned(),
        ));
    }
    Ok(Element {
        name,
        attrs,
        children: Vec::new(),
        text: String::new(),
    })
}

/// Builds an XML document as text. Names are the caller's (generated, never from a
/// request); every text and attribute value is escaped.
#[derive(Default)]
pub struct Out(pub String);

impl Out {
    /// `<name attrs…>`; attribute values are escaped.
    pub fn open(&mut self, name: &str, attrs: &[(&str, &str)]) -> &mut Self {
        self.0.push('<');
        self.0.push_str(name);
        for (k, v) in attrs {
            let _ = write!(self.0, " {k}=\"");
            self.text(v);
            self.0.push('"');
        }
        self.0.push('>');
        self
    }

    /// `</name>`.
    pub fn close(&mut self, name: &str) -> &mut Self {
        self.0.push_str("</");
        self.0.push_str(name);
        self.0.push('>');
        self
    }

    /// Escaped text. `\r` is written as a reference so it survives a parser's line-end
    /// normalisation; characters XML 1.0 cannot carry at all become U+FFFD.
    pub fn text(&mut self, t: &str) -> &mut Self {
        for c in t.chars() {
            match c {
                '<' => self.0.push_str("&lt;"),
                '>' => self.0.push_str("&gt;"),
                '&' => self.0.push_str("&amp;"),
                '"' => self.0.push_str("&quot;"),
                '\'' => self.0.push_str("&apos;"),
                '\r' => self.0.push_str("&#13;"),
                '\t' | '\n' => self.0.push(c),
                c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {
                    self.0.push('\u{FFFD}')
                }
                c => self.0.push(c),
            }
        }
        self
    }

    /// `<name>text</name>`.
    pub fn leaf(&mut self, name: &str, t: &str) -> &mut Self {
        self.open(name, &[]).text(t).close(name)
    }

    /// Markup the caller built itself.
    pub fn raw(&mut self, s: &str) -> &mut Self {
        self.0.push_str(s);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Element, XmlError> {
        parse(s, &Limits::default())
    }

    #[test]
    fn prefixes_are_arbitrary_and_default_namespaces_apply() {
        let a = p(
            r#"<s:E xmlns:s="urn:e"><s:B><x:Op xmlns:x="urn:o"><x:id>7</x:id></x:Op></s:B></s:E>"#,
        )
        .unwrap();
        let b = p(r#"<E xmlns="urn:e"><B><Op xmlns="urn:o"><id>7</id></Op></B></E>"#).unwrap();
        assert_eq!(a, b);
        let op = &a.children[0].children[0];
        assert!(op.name.is("urn:o", "Op"));
        assert_eq!(op.child("urn:o", "id").map(|e| e.text.as_str()), Some("7"));
    }

    #[test]
    fn text_references_and_cdata_decode() {
        let e = p("<a x=\"1&amp;2&#x41;\">a&lt;b&#65;<![CDATA[<raw>]]></a>").unwrap();
        assert_eq!(e.text, "a<bA<raw>");
        assert_eq!(e.attr("x"), Some("1&2A"));
    }

    #[test]
    fn dtds_and_foreign_entities_are_refused() {
        let xxe = r#"<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>"#;
        assert_eq!(p(xxe), Err(XmlError::Dtd));
        assert_eq!(p("<a>&x;</a>"), Err(XmlError::Entity("x".into())));
        assert_eq!(p("<a b=\"&x;\"/>"), Err(XmlError::Entity("x".into())));
    }

    #[test]
    fn limits_hold() {
        let deep = "<a>".repeat(40) + &"</a>".repeat(40);
        assert_eq!(p(&deep), Err(XmlError::TooDeep(32)));
        let many = format!("<a>{}</a>", "<b/>".repeat(100));
        let l = Limits {
            max_elements: 50,
            ..Limits::default()
        };
        assert_eq!(parse(&many, &l), Err(XmlError::TooManyElements(50)));
        let attrs: String = (0..70).map(|i| format!(" a{i}=\"1\"")).collect();
        assert_eq!(
            p(&format!("<a{attrs}/>")),
            Err(XmlError::TooManyAttributes(64))
        );
    }

    #[test]
    fn malformed_documents_are_errors() {
        for bad in [
            "<a>",
            "<a></b>",
            "",
            "<a/><b/>",
            "x<a/>",
            "<p:a/>",
            "<a></a></a>",
        ] {
            assert!(matches!(p(bad), Err(XmlError::Malformed(_))), "{bad}");
        }
        assert!(p("<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a/>").is_err());
    }

    #[test]
    fn out_escapes() {
        let mut o = Out::default();
        o.open("a", &[("k", "\"<")]).text("x<&").close("a");
        assert_eq!(o.0, "<a k=\"&quot;&lt;\">x&lt;&amp;</a>");
        assert_eq!(p(&o.0).unwrap().text, "x<&");
        let mut o = Out::default();
        o.leaf("a", "l1\r\nl2\u{1}");
        assert_eq!(p(&o.0).unwrap().text, "l1\r\nl2\u{FFFD}");
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let s = String::from_utf8_lossy(&data);
            let _ = parse(&s, &Limits::default());
        }

        #[test]
        fn parsing_markup_like_input_never_panics(s in "[<>/a-c:=\"' &;#x0-9!\\[\\]?-]{0,200}") {
            let _ = parse(&s, &Limits::default());
        }
    }
}
