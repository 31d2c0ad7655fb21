//! `bench http --client-process`: the load generator in a process of its own, so the
//! client's tasks do not share the servers' runtime (its two workers and their
//! wake-ups on this machine). Both servers — the bare baseline and Polyport — get the
//! same child, so the ratio stays like for like.

use std::time::Duration;

use anyhow::{Context, bail};

use super::{Summary, load};

#[derive(clap::Args, Debug)]
pub(crate) struct LoadArgs {
    #[arg(long)]
    url: String,
    /// A JSON body to POST; without it, GET.
    #[arg(long)]
    post: Option<String>,
    #[arg(long)]
    connections: usize,
    #[arg(long)]
    duration: u64,
}

/// One request, failing on any status but 2xx.
pub(crate) async fn request(
    c: reqwest::Client,
    url: String,
    post: Option<String>,
) -> anyhow::Result<()> {
    let r = match post {
        Some(body) => {
            c.post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?
        }
        None => c.get(&url).send().await?,
    };
    if !r.status().is_success() {
        bail!("unexpected status {}", r.status());
    }
    Ok(())
}

/// Runs the load here, or in a child process when `separate`.
pub(crate) async fn run(
    separate: bool,
    url: &str,
    post: Option<&str>,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<(f64, Summary)> {
    if !separate {
        let (url, post) = (url.to_string(), post.map(str::to_string));
        return load(duration, connections, move |c| {
            request(c, url.clone(), post.clone())
        })
        .await;
    }
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.args(["bench", "http-load", "--url", url])
        .args(["--connections", &connections.to_string()])
        .args(["--duration", &duration.as_secs().to_string()]);
    if let Some(body) = post {
        cmd.args(["--post", body]);
    }
    let out = cmd.output().await.context("starting the load process")?;
    if !out.status.success() {
        bail!(
            "the load process failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// The child: runs the load and prints `requests/s p50 p99`.
pub(crate) async fn child(a: LoadArgs) -> anyhow::Result<()> {
    let (rps, s) = run(
        false,
        &a.url,
        a.post.as_deref(),
        a.connections,
        Duration::from_secs(a.duration),
    )
    .await?;
    println!("{rps} {} {}", s.p50, s.p99);
    Ok(())
}

fn parse(line: &str) -> anyhow::Result<(f64, Summary)> {
    let mut f = line.split_whitespace();
    let mut next = || f.next().context("short output from the load process");
    let rps: f64 = next()?.parse()?;
    let (p50, p99) = (next()?.parse()?, next()?.parse()?);
    Ok((
        rps,
        Summary {
            count: 0,
            p50,
            p99,
            max: 0,
        },
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_what_the_child_prints() {
        let (rps, s) = super::parse("23190.5 2586 5718\n").expect("parsed");
        assert_eq!((rps, s.p50, s.p99), (23190.5, 2586, 5718));
        assert!(super::parse("23190.5 2586").is_err());
    }
}
