//! SOAP Faults in each version's own shape, and the one mapping from [`HubError`].
//!
//! SOAP 1.1: `faultcode` `soap:Client` / `soap:Server` (or `VersionMismatch`,
//! `MustUnderstand`), answered with HTTP 500. SOAP 1.2: `Code/Value` `Sender` /
//! `Receiver` with a `Subcode` naming the cause in Polyport's namespace, HTTP 400 for
//! sender faults and 500 for receiver faults. Both carry the same `detail`:
//! `<fault><code>…</code><message>…</message><field>…</field>*</fault>`, whose `code` is the
//! stable code every face uses (`validation_failed`, `record_not_found`,
//! `unique_violation`, `version_mismatch`, …).

use axum::http::StatusCode;
use polyport_core::HubError;

use crate::TNS;
use crate::envelope::{SOAP11_NS, SOAP12_NS, Version, WSSE_NS};
use crate::xml::Out;

/// The fault's class in SOAP's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// The envelope's namespace is not one this endpoint speaks.
    VersionMismatch,
    /// A header block marked `mustUnderstand` that Polyport does not process.
    MustUnderstand,
    /// The request is at fault (`Client` in 1.1, `Sender` in 1.2).
    Sender,
    /// Polyport is at fault (`Server` / `Receiver`).
    Receiver,
}

/// A field the fault is about.
#[derive(Clone, Debug)]
pub(crate) struct FieldFault {
    pub(crate) name: String,
    pub(crate) rule: String,
    pub(crate) message: String,
}

/// A fault ready to render in either version.
#[derive(Clone, Debug)]
pub(crate) struct Fault {
    pub(crate) class: Class,
    /// Stable code, e.g. `validation_failed`; the 1.2 subcode and the detail's `code`.
    pub(crate) code: &'static str,
    /// A WS-Security fault code (`FailedAuthentication`, …) in its own namespace.
    pub(crate) qualified: Option<&'static str>,
    pub(crate) reason: String,
    pub(crate) fields: Vec<FieldFault>,
    /// Header blocks not understood: (namespace, local name).
    pub(crate) not_understood: Vec<(Option<String>, String)>,
    /// For a rate-limited caller: seconds until it may come back (HTTP `Retry-After`;
    /// 0: not given). Whole seconds keep the fault small.
    pub(crate) retry_after_secs: u32,
}

impl Fault {
    pub(crate) fn new(class: Class, code: &'static str, reason: impl Into<String>) -> Self {
        Self {
            class,
            code,
            qualified: None,
            reason: reason.into(),
            fields: Vec::new(),
            not_understood: Vec::new(),
            retry_after_secs: 0,
        }
    }

    /// A fault of the request.
    pub(crate) fn sender(code: &'static str, reason: impl Into<String>) -> Self {
        Self::new(Class::Sender, code, reason)
    }

    /// A sender fault about one field.
    pub(crate) fn field(code: &'static str, field: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        let mut f = Self::sender(code, format!("{field}: {reason}"));
        f.fields.push(FieldFault {
            name: field.to_string(),
            rule: "type".into(),
            message: reason,
        });
        f
    }

    /// WS-Security's own fault codes (`wsse:FailedAuthentication`, …).
    pub(crate) fn security(local: &'static str, reason: impl Into<String>) -> Self {
        let mut f = Self::sender("unauthenticated", reason);
        f.qualified = Some(local);
        f
    }

    /// The HTTP status the SOAP HTTP binding of `v` prescribes.
    pub(crate) fn status(&self, v: Version) -> StatusCode {
        match (v, self.class) {
            (Version::V11, _) => StatusCode::INTERNAL_SERVER_ERROR,
            (Version::V12, Class::Receiver) => StatusCode::INTERNAL_SERVER_ERROR,
            (Version::V12, _) => StatusCode::BAD_REQUEST,
        }
    }

    /// The whole response envelope.
    pub(crate) fn render(&self, v: Version) -> String {
        let mut o = Out::default();
        let env = v.prefix();
        o.raw(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
        let mut attrs = vec![
            (format!("xmlns:{env}"), v.ns().to_string()),
            ("xmlns:pp".to_string(), TNS.to_string()),
        ];
        if self.qualified.is_some() {
            attrs.push(("xmlns:wsse".into(), WSSE_NS.into()));
        }
        let attrs: Vec<(&str, &str)> = attrs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        o.open(&format!("{env}:Envelope"), &attrs);
        if self.class == Class::VersionMismatch && v == Version::V12 {
            // SOAP 1.2 part 1, 5.4.7: name the envelopes this node does speak.
            o.open(&format!("{env}:Header"), &[])
                .open(&format!("{env}:Upgrade"), &[]);
            for (p, ns) in [("v12", SOAP12_NS), ("v11", SOAP11_NS)] {
                let qname = format!("{p}:Envelope");
                let decl = format!("xmlns:{p}");
                o.open(
                    &format!("{env}:SupportedEnvelope"),
                    &[("qname", &qname), (&decl, ns)],
                )
                .close(&format!("{env}:SupportedEnvelope"));
            }
            o.close(&format!("{env}:Upgrade"))
                .close(&format!("{env}:Header"));
        }
        if !self.not_understood.is_empty() && v == Version::V12 {
            o.open(&format!("{env}:Header"), &[]);
            for (ns, local) in &self.not_understood {
                let qname = match ns {
                    Some(_) => format!("q:{local}"),
                    None => local.clone(),
                };
                let decl = ns.clone().unwrap_or_default();
                let mut a = vec![("qname", qname.as_str())];
                if ns.is_some() {
                    a.push(("xmlns:q", decl.as_str()));
                }
                o.open(&format!("{env}:NotUnderstood"), &a)
                    .close(&format!("{env}:NotUnderstood"));
            }
            o.close(&format!("{env}:Header"));
        }
        o.open(&format!("{env}:Body"), &[])
            .open(&format!("{env}:Fault"), &[]);
        let class = match (v, self.class) {
            (_, Class::VersionMismatch) => "VersionMismatch",
            (_, Class::MustUnderstand) => "MustUnderstand",
            (Version::V11, Class::Sender) => "Client",
            (Version::V11, Class::Receiver) => "Server",
            (Version::V12, Class::Sender) => "Sender",
            (Version::V12, Class::Receiver) => "Receiver",
        };
        let subcode = match self.qualified {
            Some(local) => format!("wsse:{local}"),
            None => format!("pp:{}", self.code),
        };
        match v {
            Version::V11 => {
                // 1.1 has no subcodes: WS-Security names its own faultcode; otherwise the
                // class, with the code in the detail.
                let code = match self.qualified {
                    Some(_) => subcode,
                    None => format!("{env}:{class}"),
                };
                o.leaf("faultcode", &code).leaf("faultstring", &self.reason);
                o.open("detail", &[]);
                self.detail(&mut o);
                o.close("detail");
            }
            Version::V12 => {
                o.open(&format!("{env}:Code"), &[])
                    .leaf(&format!("{env}:Value"), &format!("{env}:{class}"));
                if !matches!(self.class, Class::VersionMismatch | Class::MustUnderstand) {
                    o.open(&format!("{env}:Subcode"), &[])
                        .leaf(&format!("{env}:Value"), &subcode)
                        .close(&format!("{env}:Subcode"));
                }
                o.close(&format!("{env}:Code"))
                    .open(&format!("{env}:Reason"), &[])
                    .open(&format!("{env}:Text"), &[("xml:lang", "en")])
                    .text(&self.reason)
                    .close(&format!("{env}:Text"))
                    .close(&format!("{env}:Reason"))
                    .open(&format!("{env}:Detail"), &[]);
                self.detail(&mut o);
                o.close(&format!("{env}:Detail"));
            }
        }
        o.close(&format!("{env}:Fault"))
            .close(&format!("{env}:Body"))
            .close(&format!("{env}:Envelope"));
        o.0
    }

    fn detail(&self, o: &mut Out) {
        o.open("pp:fault", &[])
            .leaf("pp:code", self.code)
            .leaf("pp:message", &self.reason);
        for f in &self.fields {
            o.open("pp:field", &[])
                .leaf("pp:name", &f.name)
                .leaf("pp:rule", &f.rule)
                .leaf("pp:message", &f.message)
                .close("pp:field");
        }
        o.close("pp:fault");
    }
}

impl From<HubError> for Fault {
    fn from(e: HubError) -> Self {
        let class = match &e {
            HubError::Storage(_) | HubError::ShuttingDown | HubError::Unavailable(_) => {
                Class::Receiver
            }
            _ => Class::Sender,
        };
        if let HubError::Storage(detail) = &e {
            tracing::error!(error = %detail, "storage error behind a SOAP call");
        }
        let reason = match &e {
            HubError::Storage(_) => "storage error (see the server log)".to_string(),
            other => other.to_string(),
        };
        let mut f = Fault::new(class, e.code(), reason);
        if let HubError::RateLimited { retry_after } = &e {
            let secs = polyport_core::rate::retry_after_secs(*retry_after);
            f.retry_after_secs = u32::try_from(secs).unwrap_or(u32::MAX);
        }
        f.fields = e
            .field_errors()
            .iter()
            .map(|fe| FieldFault {
                name: fe.field.clone(),
                rule: serde_json::to_value(fe.rule)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                message: fe.message.clone(),
            })
            .collect();
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{Limits, parse};

    #[test]
    fn each_version_has_its_own_shape() {
        let f = Fault::field("invalid_value", "age", "expected an integer");
        let v11 = parse(&f.render(Version::V11), &Limits::default()).unwrap();
        let fault = &v11.children[0].children[0];
        assert!(fault.name.is(Version::V11.ns(), "Fault"));
        assert_eq!(fault.children[0].text, "soap:Client");
        let v12 = parse(&f.render(Version::V12), &Limits::default()).unwrap();
        let code = &v12.children[0].children[0].children[0];
        assert_eq!(code.children[0].text, "env:Sender");
        assert_eq!(code.children[1].children[0].text, "pp:invalid_value");
        assert_eq!(f.status(Version::V12), StatusCode::BAD_REQUEST);
        assert_eq!(f.status(Version::V11), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
