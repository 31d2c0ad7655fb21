//! gRPC: unary Get through Polyport's dynamic dispatcher + Hub + store vs a bare tonic
//! handler returning a canned message, and Watch fanout throughput.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::Request;
use futures::StreamExt;
use http::uri::PathAndQuery;
use serde_json::json;
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

use super::{Summary, TestServer, start_baseline, streamed_writes, summarize, users_writes};

#[derive(Clone, PartialEq, prost::Message)]
struct GetUserRequest {
    #[prost(string, tag = "1")]
    id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct User {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(uint64, tag = "4")]
    version: u64,
    #[prost(string, optional, tag = "10")]
    username: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WatchUsersRequest {}

#[derive(Clone, PartialEq, prost::Message)]
struct UserChange {
    #[prost(string, tag = "1")]
    r#type: String,
    #[prost(uint64, tag = "3")]
    sequence: u64,
}

const GET: &str = "/polyport.collections.UserService/GetUser";
const WATCH: &str = "/polyport.collections.UserService/WatchUsers";

async fn bare_tonic(req: Request) -> axum::response::Response {
    let svc = tower::service_fn(|r: tonic::Request<GetUserRequest>| async move {
        Ok::<_, tonic::Status>(tonic::Response::new(User {
            id: r.into_inner().id,
            version: 1,
            username: Some("john_doe".into()),
        }))
    });
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<User, GetUserRequest>::default());
    grpc.unary(svc, req).await.map(axum::body::Body::new)
}

async fn unary_load(
    channel: Channel,
    duration: Duration,
    concurrency: usize,
) -> anyhow::Result<(f64, Summary)> {
    let call = |ch: Channel| async move {
        let mut g = tonic::client::Grpc::new(ch);
        g.ready().await.context("channel not ready")?;
        let u: tonic::Response<User> = g
            .unary(
                tonic::Request::new(GetUserRequest { id: "123".into() }),
                PathAndQuery::from_static(GET),
                ProstCodec::<GetUserRequest, User>::default(),
            )
            .await?;
        if u.get_ref().username.as_deref() != Some("john_doe") {
            bail!("unexpected reply {:?}", u.get_ref());
        }
        anyhow::Ok(())
    };
    for _ in 0..concurrency {
        call(channel.clone()).await?;
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let ch = channel.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                call(ch.clone()).await?;
                lat.push(t.elapsed().as_micros() as u64);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((
        all.len() as f64 / started.elapsed().as_secs_f64(),
        summarize(all),
    ))
}

pub(crate) async fn run(
    duration: Duration,
    concurrency: usize,
    watchers: usize,
    n: usize,
) -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let base = format!("http://{}", server.addr);
    let c = reqwest::Client::new();
    c.post(format!("{base}/api/collections"))
        .json(&json!({"name": "users", "fields": [{"name": "username", "type": "text"}]}))
        .send()
        .await?
        .error_for_status()?;
    c.post(format!("{base}/api/collections/users/records"))
        .json(&json!({"id": "123", "username": "john_doe"}))
        .send()
        .await?
        .error_for_status()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (baddr, bstop) = start_baseline(Router::new().fallback(bare_tonic)).await?;
    let connect = |addr: std::net::SocketAddr| async move {
        Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .context("connect")
    };
    println!(
        "polyport bench grpc: unary GetUser, {concurrency} concurrent calls on one HTTP/2 channel, {}s each",
        duration.as_secs()
    );
    println!(
        "{:<22} {:>12} {:>10} {:>10}",
        "server", "calls/s", "p50 µs", "p99 µs"
    );
    let (b_rps, b) = unary_load(connect(baddr).await?, duration, concurrency).await?;
    let (p_rps, p) = unary_load(connect(server.grpc_addr).await?, duration, concurrency).await?;
    println!(
        "{:<22} {:>12.0} {:>10} {:>10}",
        "bare tonic handler", b_rps, b.p50, b.p99
    );
    println!(
        "{:<22} {:>12.0} {:>10} {:>10}",
        "polyport GetUser", p_rps, p.p50, p.p99
    );
    println!(
        "ratio polyport/bare: {:.2}x calls/s (the bare handler reads nothing; Polyport reads the record from SQLite)",
        p_rps / b_rps.max(1.0)
    );

    // Watch fanout: how many deliveries per second, and how much watchers slow writers.
    let alone = users_writes(&base, n, "alone").await?;
    let ch = connect(server.grpc_addr).await?;
    let mut streams = Vec::new();
    for _ in 0..watchers {
        let mut g = tonic::client::Grpc::new(ch.clone());
        g.ready().await?;
        let s: tonic::Response<tonic::Streaming<UserChange>> = g
            .server_streaming(
                tonic::Request::new(WatchUsersRequest {}),
                PathAndQuery::from_static(WATCH),
                ProstCodec::<WatchUsersRequest, UserChange>::default(),
            )
            .await?;
        streams.push(s.into_inner());
    }
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut got = 0usize;
                while got < n {
                    match tokio::time::timeout(Duration::from_secs(30), s.next()).await {
                        Ok(Some(Ok(_))) => got += 1,
                        _ => break,
                    }
                }
                got
            })
        })
        .collect();
    streamed_writes(
        &base,
        n,
        readers,
        alone,
        &format!("Watch fanout: {watchers} WatchUsers streams"),
        "watchers",
    )
    .await?;
    bstop.cancel();
    server.stop().await;
    Ok(())
}
