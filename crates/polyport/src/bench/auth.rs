//! `polyport bench auth`: what signing in costs. REST `GET` by id on one server, the
//! same load anonymous and with each credential (an argon2id password over Basic, an API
//! key, a JWT), printed as a ratio to the anonymous run; MQTT QoS 0 fan-in against a
//! `polyport serve` child, every client anonymous vs signed in (a password, a JWT as the
//! password); then the per-check cost of a credential the cache has not seen (argon2id,
//! an API key, an HS256 JWT).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use base64::Engine as _;
use polyport_core::auth::{
    ConfigUser, Credentials, Directory, DirectoryConfig, JwtConfig, KeySpec, Role, Secret,
    hash_password,
};
use polyport_core::{AuthContext, Bus, Hub, HubConfig, Origin};
use polyport_store::{SqliteStore, StoreConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Summary, load, row, ulid_like, unlimited};

const SECRET: &str = "bench-secret-of-at-least-thirty-two-bytes";

#[derive(clap::Args, Debug)]
pub(crate) struct AuthArgs {
    /// Seconds per scenario.
    #[arg(long, default_value_t = 4)]
    duration: u64,
    /// Concurrent client connections (repeatable: one run per value).
    #[arg(long, value_delimiter = ',', default_value = "8,64")]
    concurrency: Vec<usize>,
    /// MQTT fan-in publishers (repeatable: one run per value; 0 skips MQTT).
    #[arg(long, value_delimiter = ',', default_value = "4,16")]
    mqtt_publishers: Vec<usize>,
    /// MQTT QoS 0 messages per fan-in run.
    #[arg(long, default_value_t = 50_000)]
    mqtt_messages: usize,
}

fn hs256(sub: &str, extra: u64) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let exp = polyport_core::auth::unix_now() + 3600;
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = b64.encode(format!(r#"{{"sub":"{sub}","exp":{exp},"jti":{extra}}}"#));
    let signing = format!("{header}.{claims}");
    use hmac::Mac as _;
    let mut m = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(SECRET.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    m.update(signing.as_bytes());
    format!("{signing}.{}", b64.encode(m.finalize().into_bytes()))
}

pub(crate) async fn run(args: AuthArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("polyport-bench-auth-{}", ulid_like()));
    let directory = Directory::new(DirectoryConfig {
        users: vec![ConfigUser {
            name: "alice".into(),
            secret: Secret::Hashed {
                password_hash: Some(hash_password("alice-password")?),
                password: None,
                role: Role::User,
            },
        }],
        anonymous: Some(true),
        jwt: Some(JwtConfig {
            secret: Some(SECRET.into()),
            ..JwtConfig::default()
        }),
        token_ttl: None,
    })?;
    let bus = Bus::new();
    let store = SqliteStore::open(StoreConfig::new(&dir), Arc::new(bus.clone()))?;
    let hub = Hub::with_auth(
        Arc::new(store),
        bus,
        HubConfig::default(),
        directory,
        Box::new(polyport_core::auth::Roles::default()),
    );
    let system = AuthContext::system(Origin("bench"));
    let (key, _) = hub
        .create_api_key(
            &system,
            KeySpec {
                name: "bench".into(),
                ..KeySpec::default()
            },
        )
        .await?;
    hub.create_record(
        &system,
        "bench",
        Some("r1".into()),
        serde_json::json!({"title": "hello", "views": 1})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    )
    .await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let app = polyport_http::router(hub.clone(), polyport_http::HttpConfig::default());
    let s = stop.clone();
    tokio::spawn(async move { polyport_http::serve_with(listener, app, s, unlimited()).await });

    let url = format!("http://{addr}/api/collections/bench/records/r1");
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:alice-password")
    );
    let jwt = hs256("dave", 0);
    let scenarios: [(&str, String); 3] = [
        ("Basic argon2id", basic),
        ("Bearer API key", format!("Bearer {key}")),
        ("Bearer JWT", format!("Bearer {jwt}")),
    ];
    let duration = Duration::from_secs(args.duration);
    for &c in &args.concurrency {
        println!(
            "polyport bench auth: REST GET by id, {c} connections, {}s per scenario; ratio = signed-in ÷ anonymous",
            duration.as_secs()
        );
        println!(
            "{:<20} {:>14} {:>14} {:>7}   {:>18}   {:>18}",
            "credential",
            "anon req/s",
            "signed req/s",
            "ratio",
            "p50 µs anon/auth",
            "p99 µs anon/auth"
        );
        // Each credential runs right after an anonymous run of its own, so the machine's
        // drift over the run does not land in one ratio.
        let run = |h: Option<String>| {
            let u = url.clone();
            load(duration, c, move |client: reqwest::Client| {
                let (u, h) = (u.clone(), h.clone());
                async move {
                    let mut req = client.get(&u);
                    if let Some(h) = h {
                        req = req.header("authorization", h);
                    }
                    let r = req.send().await?;
                    if !r.status().is_success() {
                        bail!("{} answered {}", u, r.status());
                    }
                    Ok(())
                }
            })
        };
        for (name, header) in &scenarios {
            let (a_rps, a_lat): (f64, Summary) = run(None).await?;
            let (s_rps, s_lat) = run(Some(header.clone())).await?;
            row(name, a_rps, s_rps, a_lat, s_lat);
        }
    }

    mqtt_fan_in(&args).await?;

    // What one check costs when the cache has not seen the credential.
    println!(
        "cost of one uncached check (µs per credential, {} each):",
        2000
    );
    let d = hub.identities();
    let per = |f: &mut dyn FnMut(u64)| {
        let n = 2000u64;
        let t = Instant::now();
        for i in 0..n {
            f(i);
        }
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    };
    let tokens: Vec<String> = (0..2000).map(|i| hs256("dave", i + 1)).collect();
    let jwt_us = per(&mut |i| {
        let _ = d.authenticate(Credentials::Bearer(&tokens[i as usize]));
    });
    let key_us = per(&mut |_| {
        let _ = d.authenticate(Credentials::Bearer(&key));
    });
    let t = Instant::now();
    let _ = polyport_core::auth::verify_password(&hash_password("x")?, b"x");
    let argon_ms = t.elapsed().as_secs_f64() * 1e3 / 2.0;
    println!(
        "  JWT HS256 verify: {jwt_us:.1} µs   API key: {key_us:.1} µs   argon2id (hash or verify): {argon_ms:.1} ms"
    );
    println!(
        "(a password, key or JWT seen before is answered from the directory's cache; argon2id runs once per credential)"
    );
    stop.cancel();
    hub.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// MQTT QoS 0 fan-in, anonymous vs signed in, on one `polyport serve` child that lets
/// both in: a connection authenticates once, so what a publish pays for its identity is
/// the policy check.
async fn mqtt_fan_in(args: &AuthArgs) -> anyhow::Result<()> {
    let runs: Vec<usize> = args
        .mqtt_publishers
        .iter()
        .copied()
        .filter(|&p| p > 0)
        .collect();
    if runs.is_empty() {
        return Ok(());
    }
    let config = format!(
        "[auth]\nusers = {{ alice = \"alice-password\" }}\nanonymous = true\n[auth.jwt]\nsecret = \"{SECRET}\"\n"
    );
    let child = super::child::PolyportChild::start_with("mqtt", &config).await?;
    let credentials = [
        (
            "password",
            ("alice".to_string(), "alice-password".to_string()),
        ),
        ("JWT password", ("dave".to_string(), hs256("dave", 0))),
    ];
    let result = async {
        for &p in &runs {
            println!(
                "polyport bench auth: MQTT QoS 0 fan-in, {p} publishers -> 1 subscriber, {} msgs, 64 B; ratio = signed-in ÷ anonymous (delivered msgs/s)",
                args.mqtt_messages
            );
            println!(
                "{:<20} {:>14} {:>14} {:>7}   {:>18}   {:>18}",
                "credential", "anon msg/s", "signed msg/s", "ratio", "p50 µs anon/auth", "p99 µs anon/auth"
            );
            for (name, creds) in &credentials {
                let (a_rate, a_lat, a_lost) =
                    super::mqtt::fan_in_qos0(child.addr, None, p, args.mqtt_messages).await?;
                let (s_rate, s_lat, s_lost) = super::mqtt::fan_in_qos0(
                    child.addr,
                    Some(creds.clone()),
                    p,
                    args.mqtt_messages,
                )
                .await?;
                row(name, a_rate, s_rate, a_lat, s_lat);
                if a_lost > 0.0 || s_lost > 0.0 {
                    println!("  lost: anonymous {a_lost:.2}%, signed in {s_lost:.2}%");
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    child.stop().await;
    result
}
