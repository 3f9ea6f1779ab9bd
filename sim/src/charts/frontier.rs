//! The exposure frontier (`lendmesh-sim exposure`): each policy's linkage above chance against its extra relay
//! traffic.

use plotters::prelude::*;

use super::{COLORS, Drawn, FONT, SIZE, draw_legend, text};
use crate::exposure::Row;

/// An attacker's name, its accuracy above chance in a row, its colour.
type Attacker = (&'static str, fn(&Row) -> f64, RGBColor);

/// One point per policy and attacker: x the relay traffic's change against the baseline (%), y the attacker's
/// accuracy above chance (percentage points); each point labelled with its policy.
pub fn frontier(scenario: &str, rows: &[Row]) -> Drawn {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (SIZE.0 + 180, SIZE.1 + 120)).into_drawing_area();
        root.fill(&WHITE).map_err(text)?;
        let xs = rows.iter().map(|r| r.relay.1);
        let x_max = xs.clone().fold(10.0f64, f64::max) * 1.15;
        let x_min = xs.fold(0.0f64, f64::min).min(-5.0);
        let y_max = rows
            .iter()
            .flat_map(|r| [r.lender_excess(), r.admin_excess()])
            .fold(10.0f64, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{scenario}: linkage above chance against extra relay traffic, per policy"),
                FONT,
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(x_min..x_max, -10f64..y_max)
            .map_err(text)?;
        chart
            .configure_mesh()
            .x_desc("relay traffic against the first policy, %")
            .y_desc("accuracy − chance, pp")
            .draw()
            .map_err(text)?;
        let series: [Attacker; 2] = [
            ("lender", Row::lender_excess, COLORS[0]),
            ("admin (volume)", Row::admin_excess, COLORS[1]),
        ];
        for (name, y, color) in series {
            // Each point with its policy's name beside it.
            chart
                .draw_series(rows.iter().map(|r| {
                    EmptyElement::at((r.relay.1, y(r)))
                        + Circle::new((0, 0), 5, color.filled())
                        + Text::new(
                            r.policy.clone(),
                            (8, -6),
                            ("sans-serif", 11).into_font().color(&color),
                        )
                }))
                .map_err(text)?
                .label(name)
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
        }
        draw_legend(&mut chart, Some(SeriesLabelPosition::UpperRight))?;
        root.present().map_err(text)?;
    }
    Ok(buf)
}
