//! The mixed-upstreams chart: each lender's drain (share of its capacity of a family used over the run), grouped
//! and colored by API family, split into its own requests (light) and lends (solid), with each family's median.

use plotters::prelude::*;

use super::{COLORS, Drawn, FONT, SIZE, text};
use crate::report::{LenderDrain, Report};

/// A family's color: OpenAI green, Anthropic orange, generic purple.
fn color(family: &str) -> RGBColor {
    match family {
        "openai" => COLORS[2],
        "anthropic" => COLORS[4],
        _ => COLORS[3],
    }
}

/// One bar slot: a lender's row, or a gap between families.
enum Slot<'a> {
    Lender(&'a LenderDrain),
    Gap,
}

/// Width of the legend panel, px.
const LEGEND_WIDTH: u32 = 170;

/// A legend swatch.
enum Swatch {
    /// A filled square.
    Fill(ShapeStyle),
    /// A horizontal line.
    Across(ShapeStyle),
    /// A vertical line.
    Upright(ShapeStyle),
}

/// The legend: a swatch and a label per entry.
fn draw_side_legend(
    side: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    entries: &[(String, Swatch)],
) -> Result<(), String> {
    let font = ("sans-serif", 14).into_font();
    for (i, (label, swatch)) in entries.iter().enumerate() {
        let y = 60 + 24 * i as i32;
        match swatch {
            Swatch::Fill(style) => side.draw(&Rectangle::new([(8, y - 6), (22, y + 6)], *style)),
            Swatch::Across(style) => side.draw(&PathElement::new(vec![(6, y), (24, y)], *style)),
            Swatch::Upright(style) => side.draw(&PathElement::new(vec![(15, y - 8), (15, y + 8)], *style)),
        }
        .map_err(text)?;
        side.draw(&Text::new(label.clone(), (30, y - 7), font.clone()))
            .map_err(text)?;
    }
    Ok(())
}

pub(super) fn drain(reports: &[Report]) -> Drawn {
    let first = reports.first().ok_or("no report")?;
    let mixed = first
        .mixed
        .as_ref()
        .ok_or("no mixed upstreams in this scenario")?;
    let mut slots: Vec<Slot<'_>> = Vec::new();
    let mut groups: Vec<(&str, usize, usize, f64)> = Vec::new();
    for f in &mixed.families {
        if !slots.is_empty() {
            slots.push(Slot::Gap);
        }
        let start = slots.len();
        slots.extend(
            mixed
                .lenders
                .iter()
                .filter(|l| l.family == f.family)
                .map(Slot::Lender),
        );
        groups.push((f.family.as_str(), start, slots.len(), f.median.mean));
    }
    let labels: Vec<String> = slots
        .iter()
        .map(|s| match s {
            Slot::Lender(l) => format!("m{}", l.member),
            Slot::Gap => String::new(),
        })
        .collect();
    let k = slots.len().max(1);
    let y_max = mixed
        .lenders
        .iter()
        .map(|l| l.drain.mean + l.drain.ci95)
        .fold(1.0, f64::max)
        * 1.12;
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(text)?;
        // The legend gets a panel of its own on the right, so no bar hides under it.
        let (plot, side) = root.split_horizontally(SIZE.0 - LEGEND_WIDTH);
        let mut chart = ChartBuilder::on(&plot)
            .caption(
                format!(
                    "{}: drain per lender by API family ({} seeds, {})",
                    first.scenario.name,
                    first.seeds.len(),
                    first.scenario.routing.policy.name()
                ),
                FONT,
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..k as f64, 0f64..y_max)
            .map_err(text)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(k * 2 + 1)
            .x_label_formatter(&|x| super::category_label(&labels, *x))
            .x_desc("lenders (member), grouped by the family of their upstreams")
            .y_desc("share of capacity used over the run")
            .draw()
            .map_err(text)?;
        let bars: Vec<(usize, &LenderDrain)> = slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Slot::Lender(l) => Some((i, *l)),
                Slot::Gap => None,
            })
            .collect();
        let (x0, x1) = (|i: usize| i as f64 + 0.15, |i: usize| i as f64 + 0.85);
        let mut legend: Vec<(String, Swatch)> = Vec::new();
        for (family, ..) in &groups {
            let c = color(family);
            let mine = || bars.iter().filter(|(_, l)| l.family == *family);
            chart
                .draw_series(mine().map(|&(i, l)| {
                    Rectangle::new([(x0(i), 0.0), (x1(i), l.own_share.mean)], c.mix(0.35).filled())
                }))
                .map_err(text)?;
            chart
                .draw_series(mine().map(|&(i, l)| {
                    let own = l.own_share.mean;
                    Rectangle::new([(x0(i), own), (x1(i), own + l.lent_share.mean)], c.filled())
                }))
                .map_err(text)?;
            legend.push((format!("{family}: lent"), Swatch::Fill(c.filled())));
            legend.push((format!("{family}: own use"), Swatch::Fill(c.mix(0.35).filled())));
        }
        // The drain's 95 % interval across seeds.
        chart
            .draw_series(bars.iter().filter(|(_, l)| l.drain.ci95 > 0.0).map(|&(i, l)| {
                let (x, d) = (i as f64 + 0.5, &l.drain);
                PathElement::new(
                    vec![(x, (d.mean - d.ci95).max(0.0)), (x, d.mean + d.ci95)],
                    BLACK.stroke_width(2),
                )
            }))
            .map_err(text)?;
        chart
            .draw_series(groups.iter().map(|&(_, start, end, median)| {
                PathElement::new(
                    vec![(start as f64 + 0.05, median), (end as f64 - 0.05, median)],
                    BLACK.stroke_width(2),
                )
            }))
            .map_err(text)?;
        legend.push(("family median".into(), Swatch::Across(BLACK.stroke_width(2))));
        legend.push(("95 % CI of drain".into(), Swatch::Upright(BLACK.stroke_width(2))));
        draw_side_legend(&side, &legend)?;
        root.present().map_err(text)?;
    }
    Ok(buf)
}
