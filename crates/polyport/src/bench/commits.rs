//! The store's group commit as a benchmark sees it: how many commits a scenario cost,
//! how many writes shared each, and how long each took — read from the server's
//! metrics (`polyport_store_batch_size`, `polyport_store_commit_seconds`) before and
//! after it. A durable row's throughput is mostly this line: fewer, fuller commits.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// This process's metrics recorder, for a server the benchmark runs in-process
/// (installed on first use; `None` if another recorder was installed first).
pub(crate) fn recorder() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .as_ref()
}

/// Running totals of the two histograms.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Commits {
    commits: f64,
    writes: f64,
    secs: f64,
}

impl Commits {
    /// Reads the totals from Prometheus text (`None` if the store has not committed).
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        Some(Self {
            commits: value("polyport_store_batch_size_count")?,
            writes: value("polyport_store_batch_size_sum")?,
            secs: value("polyport_store_commit_seconds_sum").unwrap_or(0.0),
        })
    }

    /// From a `polyport serve`'s `/metrics` (`None` when it cannot be read).
    pub(crate) async fn scrape(metrics_url: &str) -> Option<Self> {
        let text = reqwest::get(metrics_url).await.ok()?.text().await.ok()?;
        Some(Self::parse(&text).unwrap_or_default())
    }

    /// From this process's own recorder (a server run in-process).
    pub(crate) fn local(handle: &PrometheusHandle) -> Self {
        Self::parse(&handle.render()).unwrap_or_default()
    }

    /// What happened between `before` and `self`.
    pub(crate) fn since(self, before: Self) -> Self {
        Self {
            commits: self.commits - before.commits,
            writes: self.writes - before.writes,
            secs: self.secs - before.secs,
        }
    }

    /// Both together (two rounds of one scenario).
    pub(crate) fn plus(self, other: Self) -> Self {
        Self {
            commits: self.commits + other.commits,
            writes: self.writes + other.writes,
            secs: self.secs + other.secs,
        }
    }

    /// One round's share of `rounds` rounds' totals.
    pub(crate) fn per_round(self, rounds: usize) -> Self {
        let n = rounds.max(1) as f64;
        Self {
            commits: self.commits / n,
            writes: self.writes / n,
            secs: self.secs / n,
        }
    }

    /// `1234 commits, 4.3 writes each, 0.41 ms each`.
    pub(crate) fn describe(&self) -> String {
        if self.commits < 1.0 {
            return "no commits".into();
        }
        format!(
            "{:.0} commits, {:.1} writes each, {:.2} ms each",
            self.commits,
            self.writes / self.commits,
            self.secs * 1000.0 / self.commits
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE polyport_store_batch_size summary
polyport_store_batch_size{quantile=\"0.5\"} 4
polyport_store_batch_size_sum 4300
polyport_store_batch_size_count 1000
# TYPE polyport_store_batch_size_other counter
polyport_store_batch_size_other 7
polyport_store_commit_seconds{quantile=\"0.5\"} 0.0004
polyport_store_commit_seconds_sum 0.41
polyport_store_commit_seconds_count 1000
";

    #[test]
    fn reads_the_totals_and_the_difference_between_two_readings() {
        let after = Commits::parse(TEXT).expect("totals");
        assert_eq!(
            after.describe(),
            "1000 commits, 4.3 writes each, 0.41 ms each"
        );
        let before = Commits {
            commits: 500.0,
            writes: 800.0,
            secs: 0.21,
        };
        assert_eq!(
            after.since(before).describe(),
            "500 commits, 7.0 writes each, 0.40 ms each"
        );
    }

    #[test]
    fn rounds_add_up_and_average_per_round() {
        let a = Commits {
            commits: 100.0,
            writes: 400.0,
            secs: 0.03,
        };
        let b = Commits {
            commits: 300.0,
            writes: 600.0,
            secs: 0.05,
        };
        let avg = a.plus(b).per_round(2);
        assert_eq!(avg.describe(), "200 commits, 2.5 writes each, 0.20 ms each");
    }

    #[test]
    fn a_store_that_has_not_committed_says_so() {
        assert_eq!(Commits::parse("polyport_http_requests_total 3\n"), None);
        assert_eq!(Commits::default().describe(), "no commits");
    }
}
