//! `[auth.jwt] jwks_url`: the identity provider's keys, fetched before serving and
//! every `jwks_refresh_secs` after, so its key rotation needs no restart. A failed fetch
//! keeps the keys there were (and is logged); tokens signed by keys not yet fetched are
//! refused until a fetch succeeds.

use std::time::Duration;

use polyport_core::Hub;
use polyport_core::auth::JwkSet;

async fn fetch(client: &reqwest::Client, url: &str) -> anyhow::Result<JwkSet> {
    let res = client.get(url).send().await?.error_for_status()?;
    Ok(res.json::<JwkSet>().await?)
}

/// Fetches once (awaited, at most 10 s) and spawns the refresh loop.
pub(crate) async fn start(hub: &Hub) {
    let Some(jwt) = hub.identities().jwt_config() else {
        return;
    };
    let Some(url) = jwt.jwks_url.clone() else {
        return;
    };
    let every = Duration::from_secs(jwt.jwks_refresh_secs.max(10));
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the JWKS client");
            return;
        }
    };
    refresh(hub, &url, fetch(&client, &url).await);
    let hub = hub.clone();
    let stop = hub.shutdown_token();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            refresh(&hub, &url, fetch(&client, &url).await);
        }
    });
}

fn refresh(hub: &Hub, url: &str, got: anyhow::Result<JwkSet>) {
    match got {
        Ok(set) => {
            tracing::info!(%url, keys = set.keys.len(), "JWKS fetched");
            hub.identities().set_jwks(&set);
        }
        Err(e) => {
            tracing::warn!(%url, error = %e, "cannot fetch the JWKS; keeping the keys there were")
        }
    }
}
