//! A page of users with their posts: one GraphQL query vs the REST calls a client makes
//! for the same data (the N+1 pattern, and the two-call batched pattern); and a
//! subscription's fanout to many WebSocket subscribers.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::{TestServer, load, streamed_writes, users_writes};

/// The data a page is read from.
pub(crate) struct Page {
    /// Users on the page.
    pub(crate) users: usize,
    /// Users after them (ids sort later), not on the page.
    pub(crate) more_users: usize,
    /// The PostgreSQL database of the cluster engine to read from, if not the embedded.
    pub(crate) postgres: Option<String>,
}

pub(crate) async fn run(page: Page, duration: Duration, concurrency: usize) -> anyhow::Result<()> {
    let schema = super::cluster::schema();
    let pg = page.postgres.as_deref().map(|url| (url, schema.as_str()));
    let server = TestServer::start_on(pg).await?;
    let r = read_pages(&server, &page, duration, concurrency).await;
    server.stop().await;
    // The schema goes whether the run succeeded or not.
    if let Some(url) = page.postgres {
        tokio::task::spawn_blocking(move || polyport_store::pg::drop_schema(&url, &schema))
            .await??;
    }
    r
}

async fn read_pages(
    server: &TestServer,
    page: &Page,
    duration: Duration,
    concurrency: usize,
) -> anyhow::Result<()> {
    let (users, more_users) = (page.users, page.more_users);
    let base = format!("http://{}", server.addr);
    let c = reqwest::Client::new();
    let post = |path: &str, body: Value| c.post(format!("{base}{path}")).json(&body).send();
    post(
        "/api/collections",
        json!({"name": "users", "fields": [{"name": "username", "type": "text", "required": true}]}),
    )
    .await?
    .error_for_status()?;
    post(
        "/api/collections",
        json!({"name": "posts", "fields": [
            {"name": "title", "type": "text", "required": true},
            {"name": "author", "type": "relation", "collection": "users", "required": true}
        ]}),
    )
    .await?
    .error_for_status()?;
    for i in 0..users + more_users {
        let id = format!("u{i:06}");
        post(
            "/api/collections/users/records",
            json!({"id": id, "username": format!("user {i}")}),
        )
        .await?
        .error_for_status()?;
        for k in 0..2 {
            post(
                "/api/collections/posts/records",
                json!({"title": format!("post {k} by {i}"), "author": id}),
            )
            .await?
            .error_for_status()?;
        }
    }
    // Let the GraphQL schema pick up the new collections.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let query = json!({"query": format!(
        "{{ userList(first: {users}, sort: \"id\") {{ nodes {{ id username posts {{ title }} }} }} }}"
    )});
    let check = c
        .post(format!("{base}/graphql"))
        .json(&query)
        .send()
        .await?
        .json::<Value>()
        .await?;
    let nodes = check["data"]["userList"]["nodes"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    if nodes != users {
        bail!("GraphQL returned {nodes} users, expected {users}: {check}");
    }
    let beyond = match more_users {
        0 => String::new(),
        n => format!(" ({} posts in all)", 2 * (users + n)),
    };
    let engine = match page.postgres {
        Some(_) => ", cluster engine (PostgreSQL)",
        None => "",
    };
    println!(
        "polyport bench graphql: a page of {users} users with 2 posts each{beyond}{engine}, {concurrency} clients, {}s per scenario",
        duration.as_secs()
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10}",
        "scenario", "pages/s", "p50 µs", "p99 µs"
    );
    let gql = {
        let (base, q) = (base.clone(), query.clone());
        load(duration, concurrency, move |c: reqwest::Client| {
            let (u, q) = (format!("{base}/graphql"), q.clone());
            async move {
                let v: Value = c.post(u).json(&q).send().await?.json().await?;
                if v.get("errors").is_some() {
                    bail!("graphql error: {v}");
                }
                Ok(())
            }
        })
        .await?
    };
    let n_plus_1 = {
        let base = base.clone();
        load(duration, concurrency, move |c: reqwest::Client| {
            let base = base.clone();
            async move {
                for id in user_page(&c, &base, users).await? {
                    let f = format!("author=\"{id}\"");
                    c.get(format!("{base}/api/collections/posts/records"))
                        .query(&[("filter", f.as_str())])
                        .send()
                        .await?
                        .error_for_status()?;
                }
                Ok(())
            }
        })
        .await?
    };
    let batched = {
        let base = base.clone();
        load(duration, concurrency, move |c: reqwest::Client| {
            let base = base.clone();
            async move {
                let f: Vec<String> = user_page(&c, &base, users)
                    .await?
                    .iter()
                    .map(|id| format!("author=\"{id}\""))
                    .collect();
                c.get(format!("{base}/api/collections/posts/records"))
                    .query(&[("filter", f.join(" || ").as_str()), ("limit", "1000")])
                    .send()
                    .await?
                    .error_for_status()?;
                Ok(())
            }
        })
        .await?
    };
    for (name, (rps, lat)) in [
        ("GraphQL: 1 query", gql),
        ("REST: 1 + N calls", n_plus_1),
        ("REST: 2 calls (OR filter)", batched),
    ] {
        println!("{name:<34} {rps:>10.1} {:>10} {:>10}", lat.p50, lat.p99);
    }
    println!(
        "ratio GraphQL/REST(1+N) pages/s: {:.2}x; GraphQL/REST(2 calls): {:.2}x (higher is better)",
        gql.0 / n_plus_1.0.max(0.001),
        gql.0 / batched.0.max(0.001)
    );
    Ok(())
}

/// The ids of the first page of users over REST.
async fn user_page(c: &reqwest::Client, base: &str, users: usize) -> anyhow::Result<Vec<String>> {
    let page: Value = c
        .get(format!(
            "{base}/api/collections/users/records?limit={users}&sort=id"
        ))
        .send()
        .await?
        .json()
        .await?;
    Ok(page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u["id"].as_str().map(str::to_string))
        .collect())
}

/// What each subscriber of the fanout scenario asks for.
const RECORD_CHANGED: &str =
    "subscription { recordChanged(collection: \"users\") { operation id sequence record } }";

/// GraphQL subscription fanout: `subscribers` graphql-transport-ws clients on
/// `recordChanged(collection: "users")`, then `n` REST writes; deliveries/s, and the
/// writes' rate beside their rate with nobody subscribed. Then the same on raw topic
/// sockets (`/ws/topics/collections/users/+`, a frame per change and no protocol): the
/// floor a WebSocket per subscriber costs, which the GraphQL figure is a ratio to.
pub(crate) async fn subscription_fanout(subscribers: usize, n: usize) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let base = format!("http://{}", server.addr);
    reqwest::Client::new()
        .post(format!("{base}/api/collections"))
        .json(&json!({"name": "users", "fields": [{"name": "username", "type": "text"}]}))
        .send()
        .await?
        .error_for_status()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let alone = users_writes(&base, n, "alone").await?;
    let mut rates = Vec::new();
    for face in [Face::Graphql, Face::RawTopic, Face::GraphqlDistinct] {
        rates.push(face_fanout(&server, face, subscribers, n, alone).await?);
    }
    println!(
        "GraphQL subscription deliveries/s vs raw topic sockets: {:.2}x shared, {:.2}x distinct (higher is better)",
        rates[0] / rates[1].max(1.0),
        rates[2] / rates[1].max(1.0)
    );
    server.stop().await;
    Ok(())
}

/// How a fanout subscriber connects.
#[derive(Clone, Copy)]
enum Face {
    /// All on one `recordChanged` query: one shared execution.
    Graphql,
    RawTopic,
    /// Each with a filter of its own that every change still matches: an execution each,
    /// the cost when nothing can be shared.
    GraphqlDistinct,
}

/// One face's fanout: `subscribers` sockets, a warm-up write every one sees, then `n`
/// writes; returns deliveries/s.
async fn face_fanout(
    server: &TestServer,
    face: Face,
    subscribers: usize,
    n: usize,
    alone: f64,
) -> anyhow::Result<f64> {
    let base = format!("http://{}", server.addr);
    // Each reader counts the warm-up write's change as "live", then the `n` that follow.
    let live = Arc::new(tokio::sync::Barrier::new(subscribers + 1));
    let mut readers = Vec::new();
    for i in 0..subscribers {
        let url = format!("ws://{}/graphql", server.addr);
        let mut sock = match face {
            Face::Graphql => subscribe(&url, RECORD_CHANGED.to_string()).await?,
            Face::GraphqlDistinct => {
                let q = RECORD_CHANGED.replace(
                    "collection: \"users\"",
                    &format!("collection: \"users\", filter: \"username != 'nobody-{i}'\""),
                );
                subscribe(&url, q).await?
            }
            Face::RawTopic => {
                let url = format!("ws://{}/ws/topics/collections/users/%2B", server.addr);
                tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true)
                    .await?
                    .0
            }
        };
        let live = live.clone();
        readers.push(tokio::spawn(async move {
            let mut warm = false;
            let mut got = 0usize;
            while got < n {
                let next = tokio::time::timeout(Duration::from_secs(30), sock.next()).await;
                let delivery = |t: &str| matches!(face, Face::RawTopic) || t.contains("\"next\"");
                match next {
                    Ok(Some(Ok(Message::Text(t)))) if delivery(t.as_str()) => match warm {
                        false => {
                            warm = true;
                            live.wait().await;
                        }
                        true => got += 1,
                    },
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
            got
        }));
    }
    users_writes(&base, 1, "warm-up").await?;
    if tokio::time::timeout(Duration::from_secs(30), live.wait())
        .await
        .is_err()
    {
        bail!("not every subscriber saw the warm-up write within 30 s");
    }
    let title = match face {
        Face::Graphql => {
            format!(
                "subscription fanout: {subscribers} graphql-transport-ws recordChanged subscribers"
            )
        }
        Face::RawTopic => format!("the same on {subscribers} raw topic sockets"),
        Face::GraphqlDistinct => {
            "the same with a distinct filter per GraphQL subscriber (nothing shared)".to_string()
        }
    };
    streamed_writes(&base, n, readers, alone, &title, "subscribers").await
}

/// A small read buffer: tungstenite zero-fills it before each read (see bench fanout).
fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096)
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A graphql-transport-ws connection, acknowledged, with `query` subscribed.
async fn subscribe(url: &str, query: String) -> anyhow::Result<Socket> {
    let mut req = url.into_client_request()?;
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    let (mut sock, _) =
        tokio_tungstenite::connect_async_with_config(req, Some(ws_config()), true).await?;
    let send = |v: Value| Message::Text(v.to_string().into());
    sock.send(send(json!({"type": "connection_init"}))).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), sock.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("connection_ack") => break,
            Ok(Some(Ok(_))) => {}
            other => bail!("no connection_ack: {other:?}"),
        }
    }
    sock.send(send(json!({
        "id": "1",
        "type": "subscribe",
        "payload": {"query": query},
    })))
    .await?;
    Ok(sock)
}
