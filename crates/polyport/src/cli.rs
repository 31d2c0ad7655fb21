//! `polyport pub` and `polyport sub`: scripting and debugging against a running server
//! over plain HTTP (publish = `POST /api/topics/…`, subscribe = the NDJSON stream).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use futures::StreamExt;

/// Where the server is: `--server`, else `{data-dir}/listeners.json`, else port 8080.
#[derive(clap::Args, Debug)]
pub(crate) struct ServerArgs {
    /// Base URL of a running server, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "POLYPORT_SERVER")]
    server: Option<String>,
    /// Data directory whose listeners.json names the server (used when --server is absent).
    #[arg(long, env = "POLYPORT_DATA_DIR", default_value = "./polyport-data")]
    pub(crate) data_dir: PathBuf,
    /// User to sign in as (with --password).
    #[arg(long, env = "POLYPORT_USER")]
    user: Option<String>,
    /// That user's password.
    #[arg(long, env = "POLYPORT_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// An API key, JWT or sign-in token, sent as a bearer token.
    #[arg(long, env = "POLYPORT_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl ServerArgs {
    /// An HTTP client that signs every request in as the flags say.
    pub(crate) fn client(&self) -> anyhow::Result<reqwest::Client> {
        use base64::Engine as _;
        let mut headers = reqwest::header::HeaderMap::new();
        let auth = match (&self.token, &self.user) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, Some(u)) => {
                let pass = self.password.as_deref().unwrap_or("");
                let raw = format!("{u}:{pass}");
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                ))
            }
            (None, None) => None,
        };
        if let Some(a) = auth {
            let mut v = reqwest::header::HeaderValue::from_str(&a)
                .context("the credentials cannot be sent in a header")?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        Ok(reqwest::Client::builder()
            .default_headers(headers)
            .build()?)
    }

    pub(crate) fn base(&self) -> String {
        if let Some(s) = &self.server {
            return s.trim_end_matches('/').to_string();
        }
        let from_file = std::fs::read(self.data_dir.join("listeners.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("http").and_then(|h| h.as_str()).map(str::to_string));
        format!(
            "http://{}",
            from_file.unwrap_or_else(|| "127.0.0.1:8080".into())
        )
    }
}

#[derive(clap::Args, Debug)]
pub(crate) struct PubArgs {
    /// Topic, e.g. sensors/temperature.
    topic: String,
    /// Payload (default: read standard input).
    data: Option<String>,
    /// Content type of the payload.
    #[arg(long, default_value = "text/plain; charset=utf-8")]
    content_type: String,
    /// Fan out in memory only (no sequence, no replay).
    #[arg(long)]
    ephemeral: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(clap::Args, Debug)]
pub(crate) struct SubArgs {
    /// Topic filter, e.g. 'sensors/#' (repeatable).
    #[arg(required = true)]
    filters: Vec<String>,
    /// Replay from after this sequence (0 = the whole log) before following live.
    #[arg(long)]
    since: Option<u64>,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<usize>,
    #[command(flatten)]
    server: ServerArgs,
}

fn encode(s: &str) -> String {
    form_urlencode(s)
}

fn form_urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub(crate) async fn publish(args: PubArgs) -> anyhow::Result<()> {
    let body = match args.data {
        Some(d) => d.into_bytes(),
        None => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
            buf
        }
    };
    let url = format!(
        "{}/api/topics/{}{}",
        args.server.base(),
        encode(&args.topic),
        if args.ephemeral { "?durable=false" } else { "" }
    );
    let res = args
        .server
        .client()?
        .post(&url)
        .header("content-type", args.content_type)
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = res.status();
    let text = res.text().await?;
    if !status.is_success() {
        bail!("server answered {status}: {text}");
    }
    println!("{text}");
    Ok(())
}

pub(crate) async fn subscribe(args: SubArgs) -> anyhow::Result<()> {
    let mut query: Vec<String> = args
        .filters
        .iter()
        .map(|f| format!("topic={}", encode(f)))
        .collect();
    if let Some(s) = args.since {
        query.push(format!("since={s}"));
    }
    let url = format!("{}/api/stream?{}", args.server.base(), query.join("&"));
    let res = args
        .server
        .client()?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = res.status();
    if !status.is_success() {
        bail!(
            "server answered {status}: {}",
            res.text().await.unwrap_or_default()
        );
    }
    let mut stream = res.bytes_stream();
    let mut buf = Vec::new();
    let mut seen = 0usize;
    let stdout = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let mut out = stdout.lock();
            out.write_all(&line)?;
            out.flush()?;
            seen += 1;
            if args.count.is_some_and(|c| seen >= c) {
                return Ok(());
            }
        }
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub(crate) struct ProtoArgs {
    /// Also print the shipped generic API (polyport/v1/records.proto and topics.proto).
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// Prints the generated per-collection `.proto` for the server's current collections.
pub(crate) async fn proto(args: ProtoArgs) -> anyhow::Result<()> {
    let url = format!("{}/api/collections", args.server.base());
    let res = args
        .server
        .client()?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    if !res.status().is_success() {
        bail!("server answered {}", res.status());
    }
    #[derive(serde::Deserialize)]
    struct List {
        items: Vec<polyport_core::Collection>,
    }
    let list: List = res
        .json()
        .await
        .context("unexpected /api/collections body")?;
    let map: polyport_core::engine::CollectionMap = list
        .items
        .into_iter()
        .map(|c| (c.name().to_string(), std::sync::Arc::new(c)))
        .collect();
    if args.all {
        println!(
            "// ---- polyport/v1/records.proto\n{}",
            polyport_grpc::RECORDS_PROTO
        );
        println!(
            "// ---- polyport/v1/topics.proto\n{}",
            polyport_grpc::TOPICS_PROTO
        );
        println!("// ---- {}", polyport_grpc::COLLECTIONS_FILE);
    }
    print!("{}", polyport_grpc::collections_proto(&map));
    Ok(())
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum WebhooksCmd {
    /// Register an endpoint; prints it (with its signing secret).
    Add {
        /// The URL to POST to.
        url: String,
        /// Event-type filters, e.g. 'posts.*' (repeatable).
        #[arg(long = "events", value_delimiter = ',')]
        events: Vec<String>,
        /// Topic filters, e.g. 'sensors/#' (repeatable).
        #[arg(long = "topics", value_delimiter = ',')]
        topics: Vec<String>,
        /// Description.
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List endpoints.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete an endpoint.
    Rm {
        /// Endpoint id (ep_…).
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show an endpoint's deliveries with their attempt logs.
    Deliveries {
        /// Endpoint id (ep_…).
        id: String,
        /// Only pending, delivered or dead.
        #[arg(long)]
        status: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub(crate) async fn call(req: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
    let res = req.send().await.context("cannot reach the server")?;
    let status = res.status();
    let text = res.text().await?;
    if !status.is_success() {
        bail!("server answered {status}: {text}");
    }
    if text.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    Ok(serde_json::from_str(&text)?)
}

pub(crate) async fn webhooks(cmd: WebhooksCmd) -> anyhow::Result<()> {
    let c = match &cmd {
        WebhooksCmd::Add { server, .. }
        | WebhooksCmd::List { server }
        | WebhooksCmd::Rm { server, .. }
        | WebhooksCmd::Deliveries { server, .. } => server.client()?,
    };
    match cmd {
        WebhooksCmd::Add {
            url,
            events,
            topics,
            description,
            server,
        } => {
            let body = serde_json::json!({
                "url": url, "event_types": events, "topics": topics, "description": description,
            });
            let v = call(
                c.post(format!("{}/api/webhooks/endpoints", server.base()))
                    .json(&body),
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        WebhooksCmd::List { server } => {
            let v = call(c.get(format!("{}/api/webhooks/endpoints", server.base()))).await?;
            for e in v["items"].as_array().into_iter().flatten() {
                println!(
                    "{}  {:<8} {}  events={} topics={}",
                    e["id"].as_str().unwrap_or(""),
                    if e["enabled"].as_bool().unwrap_or(false) {
                        "enabled"
                    } else {
                        "disabled"
                    },
                    e["url"].as_str().unwrap_or(""),
                    e["event_types"],
                    e["topics"],
                );
            }
        }
        WebhooksCmd::Rm { id, server } => {
            call(c.delete(format!("{}/api/webhooks/endpoints/{id}", server.base()))).await?;
            println!("deleted {id}");
        }
        WebhooksCmd::Deliveries {
            id,
            status,
            limit,
            server,
        } => {
            let base = server.base();
            let mut url = format!("{base}/api/webhooks/endpoints/{id}/deliveries?limit={limit}");
            if let Some(s) = status {
                url.push_str(&format!("&status={s}"));
            }
            let v = call(c.get(url)).await?;
            for d in v["items"].as_array().into_iter().flatten() {
                println!(
                    "{}  seq {}  {}  {}  attempts {}",
                    d["id"].as_str().unwrap_or(""),
                    d["seq"],
                    d["event_type"].as_str().unwrap_or(""),
                    d["status"].as_str().unwrap_or(""),
                    d["attempts"],
                );
                let seq = d["seq"].as_u64().unwrap_or(0);
                let detail = call(c.get(format!(
                    "{base}/api/webhooks/endpoints/{id}/deliveries/{seq}"
                )))
                .await?;
                for a in detail["attempt_log"].as_array().into_iter().flatten() {
                    println!(
                        "    #{} {}  status {}  {} ms  {}",
                        a["number"],
                        a["at"].as_str().unwrap_or(""),
                        a["status"],
                        a["latency_ms"],
                        a["error"].as_str().unwrap_or(""),
                    );
                }
            }
        }
    }
    Ok(())
}
