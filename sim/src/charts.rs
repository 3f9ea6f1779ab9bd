//! SVG charts (plotters, SVG backend only: no fonts or system libraries). Each chart is drawn into a string and
//! written whole, so a failure leaves no half-written file.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Report;

mod drain;
mod frontier;

pub use frontier::frontier;

/// A chart could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("drawing {file}: {reason}")]
pub struct ChartError {
    /// The file.
    pub file: String,
    /// Why.
    pub reason: String,
}

const SIZE: (u32, u32) = (820, 480);
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
    RGBColor(23, 190, 207),
];
const FONT: (&str, u32) = ("sans-serif", 18);

fn text<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn policy(r: &Report) -> &'static str {
    r.scenario.routing.policy.name()
}

type Drawn = Result<String, String>;
type Chart = (&'static str, &'static str, fn(&[Report]) -> Drawn);
type Series = (String, Vec<(f64, f64)>, RGBColor);
type LineChart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Draws labelled lines, each with its legend entry.
fn draw_lines(chart: &mut LineChart<'_, '_>, series: Vec<Series>) -> Result<(), String> {
    for (name, points, color) in series {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(text)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    Ok(())
}

/// Draws the legend box (at `position`, or plotters' default).
fn draw_legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    position: Option<SeriesLabelPosition>,
) -> Result<(), String> {
    let mut labels = chart.configure_series_labels();
    if let Some(p) = position {
        labels.position(p);
    }
    labels
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(text)
}

/// Writes every chart for `reports` (one per policy, same scenario) into `dir`, and for a scenario with mixed
/// upstreams the drain chart of the first report (`drain.svg`); returns (title, file) pairs.
pub fn write_all(dir: &Path, reports: &[Report]) -> Result<Vec<(String, String)>, ChartError> {
    let charts: [Chart; 5] = [
        ("Served demand over time", "served.svg", served),
        ("Borrow latency CDF", "latency-cdf.svg", latency_cdf),
        ("Load per lender", "lender-load.svg", lender_load),
        ("Linkage accuracy against chance", "linkage.svg", linkage),
        ("Unserved requests by cause", "failures.svg", failures),
    ];
    let mut out = Vec::new();
    for (title, file, draw) in charts {
        let err = |reason: String| ChartError {
            file: file.to_owned(),
            reason,
        };
        let svg = draw(reports).map_err(err)?;
        std::fs::write(dir.join(file), svg).map_err(|e| err(e.to_string()))?;
        out.push((title.to_owned(), file.to_owned()));
    }
    // Scenarios with mixed upstreams: each lender's drain by API family.
    if reports.first().is_some_and(|r| r.mixed.is_some()) {
        let (title, file) = ("Drain per lender by API family", "drain.svg");
        let err = |reason: String| ChartError {
            file: file.to_owned(),
            reason,
        };
        let svg = drain::drain(reports).map_err(err)?;
        std::fs::write(dir.join(file), svg).map_err(|e| err(e.to_string()))?;
        out.push((title.to_owned(), file.to_owned()));
    }
    Ok(out)
}

fn served(reports: &[Report]) -> Drawn {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(text)?;
        let first = reports.first().ok_or("no report")?;
        let w = first.bin_minutes / 60.0;
        let hours = first.bins.len() as f64 * w;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}: served fraction of demand", first.scenario.name),
                FONT,
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..hours.max(w), 0f64..1.05f64)
            .map_err(text)?;
        chart
            .configure_mesh()
            .x_desc("virtual hours")
            .y_desc("served / demand")
            .draw()
            .map_err(text)?;
        let frac = |a: u64, d: u64| if d == 0 { 1.0 } else { a as f64 / d as f64 };
        let line = |f: &dyn Fn(&crate::outcome::Bin) -> u64, r: &Report| -> Vec<(f64, f64)> {
            r.bins
                .iter()
                .enumerate()
                .filter(|(_, b)| b.demand > 0)
                .map(|(i, b)| ((i as f64 + 0.5) * w, frac(f(b), b.demand)))
                .collect()
        };
        let mut series: Vec<Series> = vec![
            ("oracle pool".into(), line(&|b| b.oracle, first), COLORS[6]),
            ("no sharing".into(), line(&|b| b.no_sharing, first), BLACK),
        ];
        for (i, r) in reports.iter().enumerate() {
            series.push((policy(r).into(), line(&|b| b.served, r), COLORS[i % 6]));
        }
        draw_lines(&mut chart, series)?;
        draw_legend(&mut chart, Some(SeriesLabelPosition::LowerRight))?;
        root.present().map_err(text)?;
    }
    Ok(buf)
}

fn latency_cdf(reports: &[Report]) -> Drawn {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(text)?;
        // Up to the largest 99th percentile: the tail beyond is timeouts and retries.
        let x_max = reports
            .iter()
            .filter_map(|r| r.latency_cdf.get(99).map(|p| p.0))
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption("Borrow latency (request to answer), CDF up to p99", FONT)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..x_max * 1.05, 0f64..1.0f64)
            .map_err(text)?;
        chart
            .configure_mesh()
            .x_desc("ms")
            .y_desc("fraction of borrows")
            .draw()
            .map_err(text)?;
        let series = reports
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let points = r.latency_cdf.iter().map(|&(ms, p)| (ms as f64, p)).collect();
                (policy(r).to_string(), points, COLORS[i % 6])
            })
            .collect();
        draw_lines(&mut chart, series)?;
        draw_legend(&mut chart, Some(SeriesLabelPosition::LowerRight))?;
        root.present().map_err(text)?;
    }
    Ok(buf)
}

fn lender_load(reports: &[Report]) -> Drawn {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(text)?;
        let n = reports
            .iter()
            .map(|r| r.lender_load.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let shares: Vec<Vec<f64>> = reports
            .iter()
            .map(|r| {
                let total = r.lender_load.iter().sum::<u64>().max(1) as f64;
                let mut s: Vec<f64> = r.lender_load.iter().map(|&l| l as f64 / total).collect();
                s.sort_by(|a, b| b.total_cmp(a));
                s
            })
            .collect();
        let y_max = shares
            .iter()
            .flatten()
            .copied()
            .fold(0.0, f64::max)
            .max(1.0 / n as f64)
            * 1.15;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Share of all lending per lender, busiest first (flat = fair; a spike = herding)",
                FONT,
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..n as f64, 0f64..y_max)
            .map_err(text)?;
        chart
            .configure_mesh()
            .x_desc("lenders, sorted by load")
            .y_desc("share of borrowed requests")
            .draw()
            .map_err(text)?;
        let even = 1.0 / n as f64;
        chart
            .draw_series(LineSeries::new(vec![(0.0, even), (n as f64, even)], BLACK))
            .map_err(text)?
            .label("perfectly even")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        for (i, (r, s)) in reports.iter().zip(&shares).enumerate() {
            let color = COLORS[i % 6];
            let points: Vec<(f64, f64)> = s.iter().enumerate().map(|(k, &v)| (k as f64 + 0.5, v)).collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(text)?
                .label(policy(r))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        draw_legend(&mut chart, None)?;
        root.present().map_err(text)?;
    }
    Ok(buf)
}

/// Grouped bars: one group per category, one bar per report, optional error bar, optional chance marker.
struct Bars {
    title: String,
    y_desc: &'static str,
    categories: Vec<String>,
    /// values[report][category] = (value, ci, chance)
    values: Vec<Vec<(f64, f64, Option<f64>)>>,
    names: Vec<&'static str>,
}

fn bars(b: &Bars) -> Drawn {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(text)?;
        let k = b.categories.len().max(1);
        let y_max = b
            .values
            .iter()
            .flatten()
            .map(|(v, ci, c)| (v + ci).max(c.unwrap_or(0.0)))
            .fold(0.0, f64::max)
            .max(1e-6)
            * 1.2;
        let cats = b.categories.clone();
        let mut chart = ChartBuilder::on(&root)
            .caption(&b.title, FONT)
            .margin(12)
            .x_label_area_size(60)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..k as f64, 0f64..y_max)
            .map_err(text)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(k * 2 + 1)
            .x_label_formatter(&|x| category_label(&cats, *x))
            .y_desc(b.y_desc)
            .draw()
            .map_err(text)?;
        let m = b.values.len().max(1) as f64;
        let width = 0.8 / m;
        for (ri, vals) in b.values.iter().enumerate() {
            let color = COLORS[ri % 6];
            let x0 = |ci: usize| ci as f64 + 0.1 + ri as f64 * width;
            chart
                .draw_series(vals.iter().enumerate().map(|(ci, (v, _, _))| {
                    Rectangle::new([(x0(ci), 0.0), (x0(ci) + width, *v)], color.filled())
                }))
                .map_err(text)?
                .label(b.names.get(ri).copied().unwrap_or(""))
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
            chart
                .draw_series(vals.iter().enumerate().filter(|(_, (_, ci, _))| *ci > 0.0).map(
                    |(ci, (v, e, _))| {
                        let x = x0(ci) + width / 2.0;
                        PathElement::new(vec![(x, (v - e).max(0.0)), (x, v + e)], BLACK.stroke_width(2))
                    },
                ))
                .map_err(text)?;
        }
        let chance: Vec<(usize, f64)> = b
            .values
            .first()
            .map(|v| {
                v.iter()
                    .enumerate()
                    .filter_map(|(i, (_, _, c))| c.map(|c| (i, c)))
                    .collect()
            })
            .unwrap_or_default();
        if !chance.is_empty() {
            chart
                .draw_series(chance.iter().map(|&(ci, c)| {
                    PathElement::new(
                        vec![(ci as f64 + 0.05, c), (ci as f64 + 0.95, c)],
                        BLACK.stroke_width(3),
                    )
                }))
                .map_err(text)?
                .label("chance")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(3)));
        }
        draw_legend(&mut chart, None)?;
        root.present().map_err(text)?;
    }
    Ok(buf)
}

fn linkage(reports: &[Report]) -> Drawn {
    let mut categories: Vec<String> = reports.iter().flat_map(|r| r.linkage.keys().cloned()).collect();
    categories.sort();
    categories.dedup();
    let values = reports
        .iter()
        .map(|r| {
            categories
                .iter()
                .map(|c| {
                    r.linkage.get(c).map_or((0.0, 0.0, None), |l| {
                        (l.accuracy.mean, l.accuracy.ci95, Some(l.chance.mean))
                    })
                })
                .collect()
        })
        .collect();
    bars(&Bars {
        title: "Who made this borrow? Accuracy per attacker (bars, 95 % CI) vs chance (black line)".into(),
        y_desc: "fraction named correctly",
        categories,
        values,
        names: reports.iter().map(policy).collect(),
    })
}

fn failures(reports: &[Report]) -> Drawn {
    let mut categories: Vec<String> = reports.iter().flat_map(|r| r.failures.keys().cloned()).collect();
    categories.sort();
    categories.dedup();
    if categories.is_empty() {
        categories.push("(none)".into());
    }
    let values = reports
        .iter()
        .map(|r| {
            categories
                .iter()
                .map(|c| {
                    r.failures
                        .get(c)
                        .map_or((0.0, 0.0, None), |s| (s.mean * 100.0, s.ci95 * 100.0, None))
                })
                .collect()
        })
        .collect();
    bars(&Bars {
        title: "Unserved requests by cause (% of demand, 95 % CI)".into(),
        y_desc: "% of demand",
        categories,
        values,
        names: reports.iter().map(policy).collect(),
    })
}

/// The label of the bar centred at `x` on an axis with one unit per category (`k * 2 + 1` ticks put one at each
/// centre); blank between bars.
pub(crate) fn category_label(labels: &[String], x: f64) -> String {
    let i = x.floor() as usize;
    if (x - x.floor() - 0.5).abs() < 0.01 {
        labels.get(i).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}
