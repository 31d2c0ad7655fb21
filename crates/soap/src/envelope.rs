//! The SOAP envelope: which version a request speaks, its header blocks (who must
//! understand them, WS-Security's UsernameToken) and the one body element naming the
//! operation.

use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;

use crate::fault::{Class, Fault};
use crate::xml::Element;

/// SOAP 1.1's envelope namespace.
pub(crate) const SOAP11_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// SOAP 1.2's envelope namespace.
pub(crate) const SOAP12_NS: &str = "http://www.w3.org/2003/05/soap-envelope";
/// WS-Security 1.0's `Security` header namespace.
pub(crate) const WSSE_NS: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
const PASSWORD_TEXT: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordText";
/// SOAP 1.1's `actor` that means "the next node", i.e. us.
const NEXT_11: &str = "http://schemas.xmlsoap.org/soap/actor/next";
const NEXT_12: &str = "http://www.w3.org/2003/05/soap-envelope/role/next";
const ULTIMATE_12: &str = "http://www.w3.org/2003/05/soap-envelope/role/ultimateReceiver";

/// A SOAP version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    V11,
    V12,
}

impl Version {
    pub(crate) fn ns(self) -> &'static str {
        match self {
            Version::V11 => SOAP11_NS,
            Version::V12 => SOAP12_NS,
        }
    }

    /// The prefix Polyport writes (any prefix is accepted on input).
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            Version::V11 => "soap",
            Version::V12 => "env",
        }
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Version::V11 => "text/xml; charset=utf-8",
            Version::V12 => "application/soap+xml; charset=utf-8",
        }
    }

    fn of_ns(ns: &str) -> Option<Self> {
        match ns {
            SOAP11_NS => Some(Version::V11),
            SOAP12_NS => Some(Version::V12),
            _ => None,
        }
    }
}

/// What the HTTP request says about the SOAP version and action.
#[derive(Debug)]
pub(crate) struct Transport {
    pub(crate) version: Version,
    /// `SOAPAction` (1.1, quotes removed) or the content type's `action` (1.2);
    /// `None` when absent.
    pub(crate) action: Option<String>,
    /// HTTP-level credentials, used when the envelope carries no WS-Security token:
    /// `Authorization` as given, or `X-API-Key` as a bearer token.
    pub(crate) http_credentials: Option<String>,
}

/// Reads the version from the content type: `text/xml` is 1.1, `application/soap+xml`
/// is 1.2. Anything else is refused (as a 1.1 fault, the lowest common shape).
pub(crate) fn transport(headers: &HeaderMap) -> Result<Transport, Fault> {
    let http_credentials = match (headers.get("authorization"), headers.get("x-api-key")) {
        (Some(a), _) => Some(a.to_str().unwrap_or("").to_string()),
        (None, Some(k)) => Some(format!("Bearer {}", k.to_str().unwrap_or("").trim())),
        (None, None) => None,
    };
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut parts = ct.split(';').map(str::trim);
    let media = parts.next().unwrap_or("").to_ascii_lowercase();
    let params: Vec<(String, String)> = parts
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), unquote(v.trim()).to_string()))
        .collect();
    if let Some((_, cs)) = params.iter().find(|(k, _)| k == "charset")
        && !cs.eq_ignore_ascii_case("utf-8")
    {
        return Err(Fault::sender(
            "unsupported_charset",
            format!("charset '{cs}' is not supported: send UTF-8"),
        ));
    }
    match media.as_str() {
        "text/xml" => Ok(Transport {
            version: Version::V11,
            action: headers
                .get("soapaction")
                .map(|v| unquote(v.to_str().unwrap_or("").trim()).to_string()),
            http_credentials,
        }),
        "application/soap+xml" => Ok(Transport {
            version: Version::V12,
            action: params
                .into_iter()
                .find(|(k, _)| k == "action")
                .map(|(_, v)| v),
            http_credentials,
        }),
        _ => Err(Fault::sender(
            "unsupported_media_type",
            format!(
                "content type '{ct}' is not SOAP: use text/xml (SOAP 1.1) or application/soap+xml (SOAP 1.2)"
            ),
        )),
    }
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

/// WS-Security UsernameToken credentials.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) username: String,
    pub(crate) password: String,
}

/// A parsed request envelope.
#[derive(Debug)]
pub(crate) struct Envelope {
    pub(crate) credentials: Option<Credentials>,
    /// The body's one element: the operation and its parameters.
    pub(crate) body: Element,
}

/// Checks `root` is an envelope of the version the transport announced, that every
/// header block addressed to us and marked `mustUnderstand` is one we process, and
/// that the body holds exactly one element.
pub(crate) fn parse(root: Element, version: Version) -> Result<Envelope, Fault> {
    if root.name.local != "Envelope" {
        return Err(Fault::sender(
            "not_an_envelope",
            format!("the document element is {}, not a SOAP Envelope", root.name),
        ));
    }
    match root.name.ns.as_deref().and_then(Version::of_ns) {
        Some(v) if v == version => {}
        Some(v) => {
            return Err(Fault::new(
                Class::VersionMismatch,
                "version_mismatch",
                format!(
                    "a SOAP {} envelope was sent with the content type of SOAP {}",
                    label(v),
                    label(version)
                ),
            ));
        }
        None => {
            return Err(Fault::new(
                Class::VersionMismatch,
                "version_mismatch",
                format!(
                    "envelope namespace '{}' is neither SOAP 1.1 ({SOAP11_NS}) nor SOAP 1.2 ({SOAP12_NS})",
                    root.name.ns.as_deref().unwrap_or("")
                ),
            ));
        }
    }
    let ns = version.ns();
    let mut credentials = None;
    let mut body = None;
    for part in root.children {
        if part.name.is(ns, "Header") {
            credentials = header(&part, version)?;
        } else if part.name.is(ns, "Body") {
            if body.is_some() {
                return Err(Fault::sender(
                    "bad_envelope",
                    "the envelope has two Body elements",
                ));
            }
            body = Some(part);
        } else {
            return Err(Fault::sender(
                "bad_envelope",
                format!("unexpected {} in the envelope", part.name),
            ));
        }
    }
    let body = body.ok_or_else(|| Fault::sender("bad_envelope", "the envelope has no Body"))?;
    let mut elements = body.children.into_iter();
    let (Some(op), None) = (elements.next(), elements.next()) else {
        return Err(Fault::sender(
            "bad_envelope",
            "the Body must hold exactly one element: the operation (document/literal wrapped)",
        ));
    };
    Ok(Envelope {
        credentials,
        body: op,
    })
}

fn label(v: Version) -> &'static str {
    match v {
        Version::V11 => "1.1",
        Version::V12 => "1.2",
    }
}

/// Header blocks: WS-Security is understood; any other block addressed to us with
/// `mustUnderstand` is a MustUnderstand fault naming it.
fn header(h: &Element, v: Version) -> Result<Option<Credentials>, Fault> {
    let mut creds = None;
    let mut not_understood = Vec::new();
    for block in &h.children {
        if block.name.is(WSSE_NS, "Security") {
            creds = username_token(block)?;
            continue;
        }
        let must = block
            .attr_ns(v.ns(), "mustUnderstand")
            .is_some_and(|m| m == "1" || m == "true");
        let target = match v {
            Version::V11 => block.attr_ns(v.ns(), "actor"),
            Version::V12 => block.attr_ns(v.ns(), "role"),
        };
        let for_us = match target {
            None => true,
            Some(t) => t == NEXT_11 || t == NEXT_12 || t == ULTIMATE_12,
        };
        if must && for_us {
            not_understood.push((block.name.ns.clone(), block.name.local.clone()));
        }
    }
    if let Some((ns, local)) = not_understood.first() {
        let mut f = Fault::new(
            Class::MustUnderstand,
            "must_understand",
            format!(
                "header block {} is marked mustUnderstand and Polyport does not process it",
                crate::xml::Name {
                    ns: ns.clone(),
                    local: local.clone()
                }
            ),
        );
        f.not_understood = not_understood;
        return Err(f);
    }
    Ok(creds)
}

fn username_token(sec: &Element) -> Result<Option<Credentials>, Fault> {
    let Some(token) = sec.child(WSSE_NS, "UsernameToken") else {
        return Err(Fault::security(
            "UnsupportedSecurityToken",
            "the Security header holds no UsernameToken (the only token Polyport accepts)",
        ));
    };
    let username = token
        .child(WSSE_NS, "Username")
        .map(|u| u.text.trim().to_string())
        .ok_or_else(|| Fault::security("InvalidSecurityToken", "UsernameToken without Username"))?;
    let pw = token
        .child(WSSE_NS, "Password")
        .ok_or_else(|| Fault::security("InvalidSecurityToken", "UsernameToken without Password"))?;
    if let Some(t) = pw.attr("Type")
        && t != PASSWORD_TEXT
    {
        return Err(Fault::security(
            "UnsupportedSecurityToken",
            format!("password type '{t}' is not supported: use PasswordText (over TLS)"),
        ));
    }
    Ok(Some(Credentials {
        username,
        password: pw.text.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{Limits, parse as xml};

    fn env(v: Version, header: &str, body: &str) -> Result<Envelope, Fault> {
        let doc = format!(
            r#"<e:Envelope xmlns:e="{}"><e:Header>{header}</e:Header><e:Body>{body}</e:Body></e:Envelope>"#,
            v.ns()
        );
        parse(xml(&doc, &Limits::default()).unwrap(), v)
    }

    #[test]
    fn versions_must_agree() {
        assert!(env(Version::V12, "", "<Op/>").is_ok());
        let doc = xml(
            &format!(r#"<Envelope xmlns="{SOAP11_NS}"><Body><Op/></Body></Envelope>"#),
            &Limits::default(),
        )
        .unwrap();
        let f = parse(doc, Version::V12).unwrap_err();
        assert_eq!(f.class, Class::VersionMismatch);
        let other = xml(
            r#"<Envelope xmlns="urn:x"><Body/></Envelope>"#,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(
            parse(other, Version::V11).unwrap_err().class,
            Class::VersionMismatch
        );
    }

    #[test]
    fn must_understand_counts_only_blocks_for_us() {
        let v = Version::V11;
        let mine = format!(r#"<x:T xmlns:x="urn:t" e:mustUnderstand="1" xmlns:e="{SOAP11_NS}"/>"#);
        let f = env(v, &mine, "<Op/>").unwrap_err();
        assert_eq!(f.class, Class::MustUnderstand);
        let elsewhere = format!(
            r#"<x:T xmlns:x="urn:t" e:mustUnderstand="1" e:actor="urn:other" xmlns:e="{SOAP11_NS}"/>"#
        );
        assert!(env(v, &elsewhere, "<Op/>").is_ok());
        assert!(env(v, r#"<x:T xmlns:x="urn:t"/>"#, "<Op/>").is_ok());
    }

    #[test]
    fn username_token_is_read() {
        let sec = format!(
            r#"<s:Security xmlns:s="{WSSE_NS}"><s:UsernameToken><s:Username>alice</s:Username><s:Password Type="{PASSWORD_TEXT}">pw</s:Password></s:UsernameToken></s:Security>"#
        );
        let e = env(Version::V12, &sec, "<Op/>").unwrap();
        assert_eq!(
            e.credentials,
            Some(Credentials {
                username: "alice".into(),
                password: "pw".into()
            })
        );
        let digest = sec.replace(PASSWORD_TEXT, "urn:digest");
        assert_eq!(
            env(Version::V12, &digest, "<Op/>").unwrap_err().qualified,
            Some("UnsupportedSecurityToken")
        );
    }

    #[test]
    fn body_holds_one_operation() {
        assert!(env(Version::V11, "", "").is_err());
        assert!(env(Version::V11, "", "<A/><B/>").is_err());
    }
}
