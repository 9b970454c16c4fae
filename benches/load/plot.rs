//! The charts the load bench draws (plotters): the font their labels need, and the latency
//! percentiles against offered load.

use std::path::Path;

use super::*;

/// Make DejaVu Sans the plots' "sans-serif" (plotters draws no text without a font); `false`,
/// with a line saying `what` is skipped, when it is not installed (`fonts-dejavu-core`).
pub fn labels_font(what: &str) -> bool {
    let Ok(font) = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf") else {
        println!("{what} skipped: no DejaVuSans.ttf for labels");
        return false;
    };
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    let loaded =
        plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, font)
            .is_ok();
    if !loaded {
        println!("{what} skipped: the font did not load");
    }
    loaded
}

/// Latency percentiles against offered load, with the saturation and ceiling rates marked.
pub fn plot(curve: &[Run], sat: &Run, ceiling: &Run) {
    use plotters::prelude::*;
    if !labels_font("latency plot") {
        return;
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/benchmarks-latency.png");
    let root = BitMapBackend::new(&out, (900, 560)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let max_x = ceiling.achieved.max(sat.achieved) * 1.05;
    let max_y = curve
        .iter()
        .map(|r| r.p99)
        .chain([sat.p99])
        .fold(1.0f64, f64::max)
        * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "engine: Vapi end-of-call-report ingest latency vs offered load (2 cores)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_x, (0.1f64..max_y).log_scale())
        .unwrap();
    chart
        .configure_mesh()
        .x_desc("offered load, requests/s")
        .y_desc("latency, ms (log scale)")
        .label_style(("sans-serif", 14))
        .draw()
        .unwrap();
    type Percentile = fn(&Run) -> f64;
    let series: [(&str, RGBColor, Percentile); 3] = [
        ("p50", BLUE, |r| r.p50),
        ("p95", GREEN, |r| r.p95),
        ("p99", RED, |r| r.p99),
    ];
    for (name, color, value) in series {
        let points: Vec<(f64, f64)> = curve.iter().map(|r| (r.offered, value(r))).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .unwrap()
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .unwrap();
    }
    for (name, x, color) in [
        ("engine saturation", sat.achieved, BLACK),
        (
            "bare salvo ceiling",
            ceiling.achieved,
            RGBColor(150, 150, 150),
        ),
    ] {
        chart
            .draw_series(LineSeries::new(
                vec![(x, 0.1), (x, max_y)],
                color.stroke_width(1),
            ))
            .unwrap()
            .label(format!("{name}: {x:.0}/s"))
            .legend(move |(lx, ly)| PathElement::new(vec![(lx, ly), (lx + 20, ly)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .unwrap();
    root.present().unwrap();
    println!("plot: {}", out.display());
}
