//! The plots of `--report` and `--compare`, drawn by plotters as SVG text for inline use.

use hdrhistogram::Histogram;
use plotters::prelude::*;

const SIZE: (u32, u32) = (760, 340);

/// Line colours, in order of the series (a colour-blind-safe palette).
const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(230, 159, 0),
];

pub fn colour(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

/// One line of a plot: its legend, its colour's index, its points.
pub struct Series {
    pub name: String,
    pub colour: usize,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

/// The latency distribution by percentile, the HDR way: the x axis is log10(1 / (1 - q)),
/// so 90 %, 99 %, 99.9 %... are equally spaced and the tail gets the room it deserves.
pub fn percentile_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    // As far into the tail as there are samples to say something (one in 10^x).
    let reach = (h.len() as f64).log10().clamp(1.0, 6.0);
    let steps = 240;
    let mut points: Vec<(f64, f64)> = (0..=steps)
        .map(|i| {
            let x = reach * f64::from(i) / f64::from(steps);
            let q = 1.0 - 10f64.powf(-x);
            (x, h.value_at_quantile(q) as f64 / 1000.0)
        })
        .collect();
    points.push((reach, h.max() as f64 / 1000.0));
    points
}

/// The label of a percentile axis position (integers only: 0 %, 90 %, 99 %, 99.9 %...).
fn percentile_label(x: &f64) -> String {
    if (x - x.round()).abs() > 1e-6 || *x < 0.0 {
        return String::new();
    }
    match x.round() as i32 {
        0 => "0%".into(),
        n => {
            let q = 100.0 - 100.0 * 10f64.powi(-n);
            let decimals = (n - 2).max(0) as usize;
            format!("{q:.decimals$}%")
        }
    }
}

/// A latency-by-percentile plot of `series` (x from `percentile_points`), in SVG.
pub fn percentiles(title: &str, series: &[Series]) -> String {
    let x_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(2.0f64, f64::max)
        .ceil();
    draw(
        title,
        "percentile",
        "latency (ms)",
        (x_max, &percentile_label),
        series,
        None,
    )
}

/// A plot over the seconds of a run, in SVG; `window`: the measured window, shaded.
pub fn per_second(title: &str, y_desc: &str, series: &[Series], window: (f64, f64)) -> String {
    let x_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0 + 1.0))
        .fold(window.1, f64::max)
        .ceil();
    let label = |x: &f64| format!("{x:.0}");
    draw(
        title,
        "seconds since the load started",
        y_desc,
        (x_max, &label),
        series,
        Some(window),
    )
}

fn draw(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    (x_max, x_label): (f64, &dyn Fn(&f64) -> String),
    series: &[Series],
    shade: Option<(f64, f64)>,
) -> String {
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let y_max = if y_max > 0.0 { y_max * 1.08 } else { 1.0 };
    let mut svg = String::new();
    let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 17))
            .margin(12)
            .margin_right(40)
            .x_label_area_size(42)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_labels((x_max as usize + 1).min(20))
            .x_label_formatter(x_label)
            .y_label_formatter(&|y| format_value(*y))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        if let Some((from, to)) = shade {
            let band = RGBColor(0, 0, 0).mix(0.06).filled();
            chart.draw_series(std::iter::once(Rectangle::new(
                [(from, 0.0), (to, y_max)],
                band,
            )))?;
        }
        for s in series {
            let colour = colour(s.colour);
            let style = colour.stroke_width(2);
            let line = if s.dashed {
                chart.draw_series(DashedLineSeries::new(s.points.iter().copied(), 6, 4, style))?
            } else {
                chart.draw_series(LineSeries::new(s.points.iter().copied(), style))?
            };
            // Unnamed lines (a broker's further rounds) stay out of the legend.
            if !s.name.is_empty() {
                line.label(s.name.as_str()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
            }
        }
        if series.iter().any(|s| !s.name.is_empty()) {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(180, 180, 180))
                .draw()?;
        }
        root.present()?;
        Ok(())
    })();
    match drawn {
        Ok(()) => svg,
        Err(e) => format!("<p class=\"error\">{title}: could not draw: {e}</p>"),
    }
}

/// 12345.6 -> "12,346"; 1.234 -> "1.23"; 0.0123 -> "0.012".
pub fn format_value(v: f64) -> String {
    if v.abs() >= 1000.0 {
        let whole = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, c) in whole.chars().enumerate() {
            if i > 0 && (whole.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 {
            out.insert(0, '-');
        }
        out
    } else if v.abs() >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis_labels_are_the_nines() {
        let labels: Vec<String> = [0.0, 1.0, 2.0, 3.0, 4.0, 2.5]
            .iter()
            .map(percentile_label)
            .collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%", ""]);
    }

    #[test]
    fn a_percentile_plot_is_an_svg_with_its_title_and_legend() {
        let mut h = crate::stats::latency_histogram();
        for us in 1..=10_000u64 {
            h.record(us).unwrap();
        }
        let points = percentile_points(&h);
        // 10^4 samples reach 99.99 %; the last point is the maximum, 10 ms (to 3 digits).
        let last = points.last().unwrap();
        assert!(last.0 == 4.0 && (last.1 - 10.0).abs() < 0.02, "{last:?}");
        let p99 = points.iter().find(|p| (p.0 - 2.0).abs() < 1e-9).unwrap();
        assert!((p99.1 - 9.9).abs() < 0.02, "{p99:?}");
        let svg = percentiles(
            "latency <by> percentile",
            &[Series {
                name: "midge".into(),
                colour: 0,
                points,
                dashed: false,
            }],
        );
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(
            svg.contains("latency &lt;by&gt; percentile"),
            "escaped title"
        );
        assert!(svg.contains("midge") && svg.contains("99.9%"));
    }

    #[test]
    fn values_read_well() {
        assert_eq!(format_value(12345.6), "12,346");
        assert_eq!(format_value(-1234.0), "-1,234");
        assert_eq!(format_value(1.234), "1.23");
        assert_eq!(format_value(0.0123), "0.012");
        assert_eq!(format_value(0.0), "0");
    }
}
