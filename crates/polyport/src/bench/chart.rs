//! The SVG line chart a scaling mode draws (`--chart file.svg`): how a cost grows with
//! the load, Polyport's line beside its baseline's, for a reader who opens the file
//! rather than reads the table.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

/// One line: a name for the legend and its points (x ascending).
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) points: Vec<(f64, f64)>,
}

impl Series {
    /// Empty lines, one per name, for a sweep to fill.
    pub(crate) fn named<const N: usize>(names: [&str; N]) -> [Series; N] {
        names.map(|n| Series {
            name: n.to_string(),
            points: Vec::new(),
        })
    }
}

pub(crate) struct Chart<'a> {
    pub(crate) title: &'a str,
    pub(crate) x: &'a str,
    pub(crate) y: &'a str,
    /// Loads that grow by factors (10 → 100k filters) read better on a log axis.
    pub(crate) log_x: bool,
    /// Where the legend hides no line: low for lines near the top.
    pub(crate) legend: SeriesLabelPosition,
    pub(crate) series: Vec<Series>,
}

const COLOURS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

impl Chart<'_> {
    pub(crate) fn write_svg(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        self.draw(path)
            .map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))
    }

    fn draw(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        let all = || self.series.iter().flat_map(|s| s.points.iter().copied());
        let (x0, x1) = all().fold((f64::MAX, f64::MIN), |(a, b), (x, _)| (a.min(x), b.max(x)));
        let y1 = all().fold(0.0f64, |m, (_, y)| m.max(y));
        if x0 > x1 {
            return Err("no points to draw".into());
        }
        let (x0, x1) = if x0 == x1 {
            (x0 * 0.5, x1 * 1.5)
        } else {
            (x0, x1)
        };
        let y1 = if y1 > 0.0 { y1 * 1.1 } else { 1.0 };
        let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(self.title, ("sans-serif", 18))
            .margin(12)
            .margin_right(28)
            .x_label_area_size(42)
            .y_label_area_size(64);
        macro_rules! plot {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc(self.x)
                    .y_desc(self.y)
                    .x_label_formatter(&|v| tidy(*v))
                    .y_label_formatter(&|v| tidy(*v))
                    .draw()?;
                for (i, s) in self.series.iter().enumerate() {
                    let colour = COLOURS[i % COLOURS.len()];
                    chart
                        .draw_series(LineSeries::new(
                            s.points.iter().copied(),
                            colour.stroke_width(2),
                        ))?
                        .label(s.name.as_str())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                        });
                    chart.draw_series(
                        s.points.iter().map(|&p| Circle::new(p, 3, colour.filled())),
                    )?;
                }
                chart
                    .configure_series_labels()
                    .position(self.legend.clone())
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK.mix(0.3))
                    .draw()?;
            }};
        }
        if self.log_x {
            plot!(builder.build_cartesian_2d((x0..x1).log_scale(), 0.0..y1)?);
        } else {
            plot!(builder.build_cartesian_2d(x0..x1, 0.0..y1)?);
        }
        root.present()?;
        Ok(())
    }
}

/// Axis labels as people write them: 100k, 2.5k, 12, 0.8.
fn tidy(v: f64) -> String {
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    match v.abs() {
        a if a >= 1e6 => format!("{}M", trim(format!("{:.1}", v / 1e6))),
        a if a >= 1e3 => format!("{}k", trim(format!("{:.1}", v / 1e3))),
        a if a >= 10.0 || a == 0.0 => format!("{v:.0}"),
        _ => trim(format!("{v:.2}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn labels_read_as_people_write_them() {
        let t = super::tidy;
        assert_eq!(
            [
                t(100_000.0),
                t(2_500.0),
                t(18_000.0),
                t(12.0),
                t(0.8),
                t(0.0),
                t(1.25)
            ],
            ["100k", "2.5k", "18k", "12", "0.8", "0", "1.25"]
        );
    }
}
