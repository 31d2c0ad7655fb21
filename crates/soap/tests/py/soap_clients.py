"""Helpers the SOAP tests share: zeep clients bound to either binding, raw envelopes,
and reading a fault back with lxml."""

from __future__ import annotations

import httpx
from lxml import etree
import requests
from zeep import Client, Settings
from zeep.transports import Transport

TNS = "urn:polyport:soap"
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
BINDINGS = {"1.1": "PolyportSoap11", "1.2": "PolyportSoap12"}


def zeep_service(server, version: str = "1.1", http_auth: tuple[str, str] | None = None, **kw):
    """`Client(wsdl=…)` as seed 003 builds it, bound to the SOAP 1.1 or 1.2 port;
    `http_auth` fetches the WSDL with HTTP Basic (needed when anonymous callers are off)."""
    if http_auth:
        session = requests.Session()
        session.auth = http_auth
        kw["transport"] = Transport(session=session)
    client = Client(wsdl=f"{server.url}/soap?wsdl", settings=Settings(strict=True), **kw)
    return client.bind("Polyport", BINDINGS[version])


def envelope(body: str, version: str = "1.1", header: str = "") -> str:
    ns = SOAP11 if version == "1.1" else SOAP12
    head = f"<s:Header>{header}</s:Header>" if header else ""
    return f'<s:Envelope xmlns:s="{ns}">{head}<s:Body>{body}</s:Body></s:Envelope>'


def post(http: httpx.Client, doc: str | bytes, version: str = "1.1", action: str | None = "", content_type: str | None = None) -> httpx.Response:
    """POSTs a raw document to /soap with the content type (and action) of `version`."""
    headers = {}
    if version == "1.1":
        headers["Content-Type"] = content_type or "text/xml; charset=utf-8"
        if action is not None:
            headers["SOAPAction"] = f'"{action}"'
    else:
        ct = content_type or "application/soap+xml; charset=utf-8"
        headers["Content-Type"] = ct + (f'; action="{action}"' if action else "")
    return http.post("/soap", content=doc, headers=headers)


def parse(r: httpx.Response) -> etree._Element:
    return etree.fromstring(r.content)


def fault_of(r: httpx.Response) -> dict:
    """The fault in a response, version-neutral: class, subcode (1.2), code and fields
    from the detail."""
    root = parse(r)
    ns = root.nsmap.get(root.prefix)
    f = root.find(f"{{{ns}}}Body/{{{ns}}}Fault")
    assert f is not None, r.text
    if ns == SOAP11:
        cls, reason, detail = f.findtext("faultcode"), f.findtext("faultstring"), f.find("detail")
        sub = None
    else:
        cls = f.findtext(f"{{{ns}}}Code/{{{ns}}}Value")
        sub = f.findtext(f"{{{ns}}}Code/{{{ns}}}Subcode/{{{ns}}}Value")
        reason = f.findtext(f"{{{ns}}}Reason/{{{ns}}}Text")
        detail = f.find(f"{{{ns}}}Detail")
    pp = detail.find(f"{{{TNS}}}fault") if detail is not None else None
    return {
        "version": "1.1" if ns == SOAP11 else "1.2",
        "class": cls.split(":")[-1],
        "subcode": sub.split(":")[-1] if sub else None,
        "reason": reason,
        "code": pp.findtext(f"{{{TNS}}}code") if pp is not None else None,
        "fields": [fl.findtext(f"{{{TNS}}}name") for fl in pp.findall(f"{{{TNS}}}field")] if pp is not None else [],
        "status": r.status_code,
    }
