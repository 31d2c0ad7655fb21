//! The table every peer benchmark prints: one row per scenario, Polyport's figure,
//! the peer's, and the ratio (Polyport ÷ peer).

use super::commits::Commits;

/// One scenario's result: messages per second, or latency percentiles in µs.
pub(crate) enum Figure {
    Rate(f64),
    Latency {
        p50: u64,
        p99: u64,
    },
    /// Resident memory the broker grew by per idle connection, KiB.
    Memory(Option<f64>),
}

impl Figure {
    /// The median of each of the figure's numbers over rounds of one scenario (all of
    /// one kind); `None` for no rounds.
    fn median(figs: Vec<Figure>) -> Option<Figure> {
        fn mid<T: Copy + PartialOrd>(mut v: Vec<T>) -> Option<T> {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            v.get(v.len() / 2).copied()
        }
        let mut rates = Vec::new();
        let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
        let mut memory = Vec::new();
        for f in &figs {
            match f {
                Figure::Rate(r) => rates.push(*r),
                Figure::Latency { p50, p99 } => {
                    p50s.push(*p50);
                    p99s.push(*p99);
                }
                Figure::Memory(m) => memory.extend(*m),
            }
        }
        Some(match figs.first()? {
            Figure::Rate(_) => Figure::Rate(mid(rates)?),
            Figure::Latency { .. } => Figure::Latency {
                p50: mid(p50s)?,
                p99: mid(p99s)?,
            },
            Figure::Memory(_) => Figure::Memory(mid(memory)),
        })
    }

    /// The figure as its column shows it.
    fn show(&self) -> String {
        match self {
            Figure::Rate(x) => format!("{x:.0}/s"),
            Figure::Latency { p50, p99 } => format!("{p50}/{p99}"),
            Figure::Memory(Some(v)) => format!("{v:.1}"),
            Figure::Memory(None) => "-".into(),
        }
    }

    /// Ours ÷ the peer's, as the ratio column and the round-by-round line show it.
    fn ratio(&self, peer: &Figure) -> Option<String> {
        match (self, peer) {
            (Figure::Memory(Some(x)), Figure::Memory(Some(y))) if *y > 0.0 => {
                Some(format!("{:.2}×", x / y))
            }
            (Figure::Rate(x), Figure::Rate(y)) => Some(format!("{:.2}×", x / y.max(1e-9))),
            (Figure::Latency { p50, p99 }, Figure::Latency { p50: q50, p99: q99 }) => {
                Some(format!(
                    "{:.2}/{:.2}×",
                    *p50 as f64 / (*q50).max(1) as f64,
                    *p99 as f64 / (*q99).max(1) as f64
                ))
            }
            _ => None,
        }
    }
}

/// Runs each scenario on our side (`run(s, false)`) and, when it is up, on the peer
/// (`run(s, true)`), printing one row each under the headings `ours` and `peer`.
/// With `rounds` > 1 the two take turns that many times and the row holds the medians
/// (this machine's noise moves a single run by ±20%), followed by each round's ratio.
/// With `cpu` (the two servers' pids) each row also gets the ratio of the CPU time
/// each server spent on the same work; with `metrics` (our server's `/metrics`), what
/// its store's group commit did for it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn compare<S: Copy, F, Fut>(
    ours: &str,
    peer: &str,
    peer_up: bool,
    cpu: Option<(u32, u32)>,
    metrics: Option<&str>,
    rounds: usize,
    scenarios: &[(&str, S)],
    run: F,
) -> anyhow::Result<()>
where
    F: Fn(S, bool) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Figure>>,
{
    use anyhow::Context as _;
    let cpu = cpu.filter(|_| peer_up);
    let rounds = rounds.max(1);
    print_header(ours, peer, cpu.is_some());
    let spent = |pid: Option<u32>| pid.and_then(super::child::cpu_secs);
    let commits = async || match metrics {
        Some(url) => Commits::scrape(url).await,
        None => None,
    };
    for (name, s) in scenarios {
        let mut figures: Vec<(Figure, Option<Figure>)> = Vec::with_capacity(rounds);
        let (mut ours_cpu, mut peer_cpu) = (Some(0.0), Some(0.0));
        let mut committed = None;
        for _ in 0..rounds {
            let before = spent(cpu.map(|c| c.0));
            let commits_before = commits().await;
            let a = run(*s, false)
                .await
                .with_context(|| format!("{ours}: {name}"))?;
            ours_cpu = before
                .zip(spent(cpu.map(|c| c.0)))
                .zip(ours_cpu)
                .map(|((b, a), sum)| sum + a - b);
            let round = commits_before
                .zip(commits().await)
                .map(|(before, after)| after.since(before));
            committed = match (committed, round) {
                (None, r) => r,
                (Some(c), Some(r)) => Some(c.plus(r)),
                (c, None) => c,
            };
            let before = spent(cpu.map(|c| c.1));
            let b = match peer_up {
                true => Some(
                    run(*s, true)
                        .await
                        .with_context(|| format!("{peer}: {name}"))?,
                ),
                false => None,
            };
            peer_cpu = before
                .zip(spent(cpu.map(|c| c.1)))
                .zip(peer_cpu)
                .map(|((b, a), sum)| sum + a - b);
            figures.push((a, b));
        }
        let each: Vec<String> = figures
            .iter()
            .filter_map(|(a, b)| b.as_ref().and_then(|b| a.ratio(b)))
            .collect();
        let (ours_figs, peer_figs): (Vec<Figure>, Vec<Option<Figure>>) =
            figures.into_iter().unzip();
        let peer_figs: Option<Vec<Figure>> = peer_figs.into_iter().collect();
        let a = Figure::median(ours_figs).context("no rounds")?;
        let b = peer_figs.and_then(Figure::median);
        print_row(name, &a, b.as_ref());
        if rounds > 1 && !each.is_empty() {
            println!("  each round: {}", each.join(" "));
        }
        if let (Some(x), Some(y)) = (ours_cpu.filter(|_| cpu.is_some()), peer_cpu) {
            let (x, y) = (x / rounds as f64, y / rounds as f64);
            println!(
                "{:<44} {x:>13.2}s {y:>13.2}s {:>7.2}×",
                "  server CPU for it",
                x / y.max(1e-9)
            );
        }
        if let Some(c) = committed {
            println!("  {ours}'s store: {}", c.per_round(rounds).describe());
        }
    }
    Ok(())
}

/// [`compare`] against the local RabbitMQ, with the CPU time of both servers (the
/// Polyport child's and RabbitMQ's `beam.smp`, when it can be found).
pub(crate) async fn against_rabbitmq<S: Copy, F, Fut>(
    polyport: &super::child::PolyportChild,
    rabbit_up: bool,
    rounds: usize,
    scenarios: &[(&str, S)],
    run: F,
) -> anyhow::Result<()>
where
    F: Fn(S, bool) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Figure>>,
{
    let rabbit = super::child::pids_named("beam.smp").into_iter().next();
    let cpu = rabbit.map(|r| (polyport.pid, r));
    let metrics = polyport.metrics.as_deref();
    compare(
        "Polyport", "RabbitMQ", rabbit_up, cpu, metrics, rounds, scenarios, run,
    )
    .await
}

/// The column headings.
fn print_header(ours: &str, peer: &str, cpu: bool) {
    println!(
        "{:<44} {:>14} {:>14} {:>8}",
        "scenario", ours, peer, "ratio"
    );
    if cpu {
        println!("(under each row: the CPU seconds each server spent on it; lower is better)");
    }
}

/// One row; `b` is `None` when the peer is not reachable.
pub(crate) fn print_row(name: &str, a: &Figure, b: Option<&Figure>) {
    let ratio = b.and_then(|b| a.ratio(b)).unwrap_or_else(|| "-".into());
    println!(
        "{name:<44} {:>14} {:>14} {ratio:>8}",
        a.show(),
        b.map_or_else(|| "-".into(), Figure::show)
    );
}

#[cfg(test)]
mod tests {
    use super::Figure;

    #[test]
    fn rounds_give_the_median_of_each_number() {
        let rates = [12.0, 9.0, 15.0].map(Figure::Rate).into();
        assert!(matches!(Figure::median(rates), Some(Figure::Rate(r)) if r == 12.0));
        let lat = vec![
            Figure::Latency { p50: 300, p99: 900 },
            Figure::Latency { p50: 100, p99: 800 },
            Figure::Latency { p50: 200, p99: 700 },
        ];
        assert!(matches!(
            Figure::median(lat),
            Some(Figure::Latency { p50: 200, p99: 800 })
        ));
        let mem = vec![
            Figure::Memory(Some(2.0)),
            Figure::Memory(None),
            Figure::Memory(Some(1.0)),
        ];
        assert!(matches!(Figure::median(mem), Some(Figure::Memory(Some(m))) if m == 2.0));
        assert!(Figure::median(Vec::new()).is_none());
    }
}
