//! SOAP `GetBench`, `CreateBench` and `ListBenches` against REST's GET, POST and list on
//! the same records in the same run: what the envelope, the XML parse and the XML answer
//! cost over the JSON face (goal: SOAP ≥ 0.7× REST).

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::json;

use super::peer::{Figure, compare};
use super::{TestServer, load};

#[derive(clap::Args, Debug)]
pub(crate) struct SoapArgs {
    /// Seconds per scenario.
    #[arg(long, default_value_t = 5)]
    duration: u64,
}

#[derive(Clone, Copy)]
enum Op {
    Get,
    Create,
    List,
}

#[derive(Clone, Copy)]
struct Scenario {
    op: Op,
    concurrency: usize,
}

const ENVELOPE: &str = r#"<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>"#;

fn soap_body(op: Op) -> (&'static str, String) {
    let (name, inner) = match op {
        Op::Get => ("GetBench", "<id>r1</id>".to_string()),
        Op::Create => (
            "CreateBench",
            "<title>bench</title><views>3</views>".to_string(),
        ),
        Op::List => ("ListBenches", "<limit>20</limit>".to_string()),
    };
    (
        name,
        format!(
            r#"{ENVELOPE}<{name} xmlns="urn:polyport:soap">{inner}</{name}></soap:Body></soap:Envelope>"#
        ),
    )
}

pub(crate) async fn run(args: SoapArgs) -> anyhow::Result<()> {
    let duration = Duration::from_secs(args.duration.max(1));
    let server = TestServer::start().await?;
    let base = format!("http://{}", server.addr);
    let c = reqwest::Client::new();
    c.post(format!("{base}/api/collections"))
        .json(&json!({"name": "benches", "fields": [
            {"name": "title", "type": "text", "required": true},
            {"name": "views", "type": "integer"},
        ]}))
        .send()
        .await?
        .error_for_status()?;
    for i in 0..20 {
        let id = if i == 0 {
            "r1".to_string()
        } else {
            format!("r{i:02}")
        };
        c.post(format!("{base}/api/collections/benches/records"))
            .json(&json!({"id": id, "title": "hello", "views": i}))
            .send()
            .await?
            .error_for_status()?;
    }
    // The service is regenerated in the background: wait until it has the collection.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, get) = soap_body(Op::Get);
        let r = soap(&c, &base, "GetBench", get).await;
        if r.is_ok() {
            break;
        }
        if std::time::Instant::now() > deadline {
            return r.context("SOAP GetBench never answered");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "polyport bench soap: SOAP 1.1 vs REST on the same records, {}s per scenario (higher is better; ratio SOAP ÷ REST)",
        duration.as_secs()
    );
    let scenarios = [
        (
            "get by id, 8 connections",
            Scenario {
                op: Op::Get,
                concurrency: 8,
            },
        ),
        (
            "get by id, 64 connections",
            Scenario {
                op: Op::Get,
                concurrency: 64,
            },
        ),
        (
            "create (durable), 8 connections",
            Scenario {
                op: Op::Create,
                concurrency: 8,
            },
        ),
        (
            "create (durable), 64 connections",
            Scenario {
                op: Op::Create,
                concurrency: 64,
            },
        ),
        (
            "list 20 records, 8 connections",
            Scenario {
                op: Op::List,
                concurrency: 8,
            },
        ),
    ];
    compare(
        "SOAP",
        "REST",
        true,
        None,
        None,
        1,
        &scenarios,
        |s, rest| {
            let base = base.clone();
            async move {
                let (rps, _lat) = if rest {
                    let (method, url, body) = match s.op {
                        Op::Get => (
                            "GET",
                            format!("{base}/api/collections/benches/records/r1"),
                            None,
                        ),
                        Op::Create => (
                            "POST",
                            format!("{base}/api/collections/benches/records"),
                            Some(json!({"title": "bench", "views": 3}).to_string()),
                        ),
                        Op::List => (
                            "GET",
                            format!("{base}/api/collections/benches/records?limit=20"),
                            None,
                        ),
                    };
                    load(duration, s.concurrency, move |c: reqwest::Client| {
                        let (url, body) = (url.clone(), body.clone());
                        async move {
                            let req = match (method, body) {
                                ("POST", Some(b)) => c
                                    .post(url)
                                    .header("content-type", "application/json")
                                    .body(b),
                                _ => c.get(url),
                            };
                            req.send().await?.error_for_status()?.bytes().await?;
                            Ok(())
                        }
                    })
                    .await?
                } else {
                    let (name, body) = soap_body(s.op);
                    load(duration, s.concurrency, move |c: reqwest::Client| {
                        let (base, body) = (base.clone(), body.clone());
                        async move { soap(&c, &base, name, body).await }
                    })
                    .await?
                };
                Ok(Figure::Rate(rps))
            }
        },
    )
    .await?;
    server.stop().await;
    Ok(())
}

async fn soap(c: &reqwest::Client, base: &str, op: &str, body: String) -> anyhow::Result<()> {
    let r = c
        .post(format!("{base}/soap"))
        .header("content-type", "text/xml; charset=utf-8")
        .header("soapaction", format!("\"urn:polyport:soap#{op}\""))
        .body(body)
        .send()
        .await?;
    let status = r.status();
    let text = r.bytes().await?;
    if !status.is_success() {
        bail!("SOAP {op}: {status} {}", String::from_utf8_lossy(&text));
    }
    Ok(())
}
