//! `polyport bench filters`: what a publish costs as subscriptions pile up on other
//! topics. N subscribers each follow their own `devices/{i}/#`; events go to a topic none
//! of them matches, then to one that exactly one matches. A broker that scans every filter
//! per message gets slower in proportion to N; one with a topic index stays flat. Ratio =
//! cost at N ÷ cost at the smallest N, in the same run.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use polyport_core::{
    AuthContext, Bus, Durability, EventDraft, Hub, HubConfig, Origin, SubscribeRequest, Topic,
    TopicFilter,
};
use polyport_store::{SqliteStore, StoreConfig};

use super::ulid_like;

#[derive(clap::Args, Debug)]
pub(crate) struct FiltersArgs {
    /// Subscriber counts (one run each; the first is the reference).
    #[arg(long, value_delimiter = ',', default_value = "10,10000,100000")]
    subscribers: Vec<usize>,
    /// Ephemeral events published per measurement.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Draw ns/publish against subscriptions into this SVG file.
    #[arg(long)]
    chart: Option<std::path::PathBuf>,
}

pub(crate) async fn run(args: FiltersArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("polyport-bench-filters-{}", ulid_like()));
    let bus = Bus::new();
    let store = SqliteStore::open(StoreConfig::new(&dir), Arc::new(bus.clone()))?;
    let hub = Hub::new(Arc::new(store), bus, HubConfig::default());
    let ctx = AuthContext::system(Origin("bench"));
    println!(
        "polyport bench filters: ephemeral publishes with N subscribers on `devices/{{i}}/#`, {} events each; ratio = ns/publish ÷ the first row's",
        args.events
    );
    println!(
        "{:>12} {:>22} {:>8} {:>22} {:>8}",
        "subscribers", "ns/publish (no match)", "ratio", "ns/publish (1 match)", "ratio"
    );
    let mut subs = Vec::new();
    let mut reference: Option<(f64, f64)> = None;
    let mut lines =
        ["no subscriber matches", "one subscriber matches"].map(|n| super::chart::Series {
            name: n.to_string(),
            points: Vec::new(),
        });
    for &n in &args.subscribers {
        while subs.len() < n {
            let f = TopicFilter::new(&format!("devices/{}/#", subs.len()))?;
            subs.push(
                hub.subscribe(
                    &ctx,
                    SubscribeRequest {
                        filters: vec![f],
                        ..SubscribeRequest::default()
                    },
                )
                .await?,
            );
        }
        let time = |topic: &str| {
            let (hub, ctx, topic) = (hub.clone(), ctx.clone(), Topic::new(topic));
            async move {
                let topic = topic?;
                let started = Instant::now();
                for _ in 0..args.events {
                    let mut d = EventDraft::new(topic.clone(), Bytes::from_static(b"x"));
                    d.durability = Durability::Ephemeral;
                    hub.publish(&ctx, d).await?;
                }
                anyhow::Ok(started.elapsed().as_nanos() as f64 / args.events as f64)
            }
        };
        let none = time("elsewhere/x").await?;
        let one = time("devices/0/temp").await?;
        // (The matching subscriber reads nothing: past its queue the events count as
        // dropped for it, which costs what a delivery does.)
        let (r0, r1) = *reference.get_or_insert((none, one));
        println!(
            "{n:>12} {none:>22.0} {:>7.2}x {one:>22.0} {:>7.2}x",
            none / r0,
            one / r1
        );
        lines[0].points.push((n as f64, none));
        lines[1].points.push((n as f64, one));
    }
    if let Some(path) = &args.chart {
        super::chart::Chart {
            title: "Publish cost by subscriptions on unrelated topics",
            x: "subscriptions (each its own devices/{i}/# filter)",
            y: "ns per publish",
            log_x: true,
            legend: plotters::prelude::SeriesLabelPosition::LowerRight,
            series: lines.into(),
        }
        .write_svg(path)?;
    }
    drop(subs);
    hub.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
