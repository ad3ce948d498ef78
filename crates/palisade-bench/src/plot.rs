//! The scaling plot: latency and connection rate against N (log x), one line per
//! configuration, as a self-contained SVG.
//!
//! Hand-written on purpose: three panels of polylines and tick labels are ~150 lines,
//! whereas a plotting crate (plotters and its font/image stack) would add dozens of
//! dependencies to a workspace that must build offline in private clusters, for one
//! picture.

use std::fmt::Write as _;

use crate::report::{Config, Metric, Report};

/// Panel size in px (each metric gets one panel).
const PANEL_W: f64 = 360.0;
/// Panel height in px.
const PANEL_H: f64 = 260.0;
/// Margins in px around a panel's plotting area: left, right, top, bottom.
const MARGIN: (f64, f64, f64, f64) = (58.0, 14.0, 30.0, 42.0);

fn color(c: Config) -> &'static str {
    match c {
        Config::None => "#555555",
        Config::Palisade => "#1b9e77",
        Config::IptablesFlat => "#d95f02",
        Config::IptablesStateful => "#7570b3",
    }
}

/// Renders the plot. Returns an SVG document (empty panels when nothing was measured).
pub fn svg(report: &Report) -> String {
    let metrics = [Metric::UdpRrUs, Metric::TcpRrUs, Metric::CrrPerS];
    let width = PANEL_W * metrics.len() as f64;
    let height = PANEL_H + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, m) in metrics.iter().enumerate() {
        panel(&mut s, report, *m, i as f64 * PANEL_W);
    }
    // Legend.
    let mut x = 20.0;
    for c in &report.configs {
        let y = PANEL_H + 22.0;
        let dash = if *c == Config::None {
            r#" stroke-dasharray="5,3""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            x + 24.0,
            color(*c),
            x + 28.0,
            y + 4.0,
            c.as_str()
        );
        x += 150.0;
    }
    s.push_str("</svg>\n");
    s
}

fn panel(s: &mut String, report: &Report, metric: Metric, x0: f64) {
    let (ml, mr, mt, mb) = MARGIN;
    let (left, right, top, bottom) = (x0 + ml, x0 + PANEL_W - mr, mt, PANEL_H - mb);
    let ns: Vec<usize> = report.entries.iter().copied().filter(|n| *n > 0).collect();
    let (lo, hi) = match (ns.iter().min(), ns.iter().max()) {
        (Some(&a), Some(&b)) if b > a => ((a as f64).log10(), (b as f64).log10()),
        (Some(&a), _) => ((a as f64).log10() - 0.5, (a as f64).log10() + 0.5),
        _ => (0.0, 1.0),
    };
    let ymax = report
        .configs
        .iter()
        .flat_map(|&c| {
            let ns = if c == Config::None {
                vec![0]
            } else {
                ns.clone()
            };
            ns.into_iter()
                .filter_map(move |n| report.summary(c, n, metric).map(|s| s.median))
        })
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.15;
    let px = |n: usize| left + ((n as f64).log10() - lo) / (hi - lo) * (right - left);
    let py = |v: f64| bottom - v / ymax * (bottom - top);
    let title = match metric {
        Metric::UdpRrUs => "UDP request/response (µs, lower is better)",
        Metric::TcpRrUs => "TCP request/response (µs, lower is better)",
        Metric::CrrPerS => "TCP connections/s (higher is better)",
        Metric::TcpGbps => "TCP stream (Gbit/s)",
    };
    let _ = writeln!(
        s,
        r#"<text x="{}" y="18" text-anchor="middle" font-weight="bold">{title}</text>"#,
        x0 + PANEL_W / 2.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        right - left,
        bottom - top
    );
    for &n in &ns {
        let x = px(n);
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{bottom}" x2="{x}" y2="{}" stroke="#999"/><text x="{x}" y="{}" text-anchor="middle">{}</text>"##,
            bottom + 4.0,
            bottom + 16.0,
            human(n)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">N entries (log)</text>"#,
        (left + right) / 2.0,
        bottom + 32.0
    );
    for k in 0..=4 {
        let v = ymax * k as f64 / 4.0;
        let y = py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{y}" x2="{right}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            left,
            left - 4.0,
            y + 4.0,
            tick(v)
        );
    }
    for &c in &report.configs {
        let col = color(c);
        if c == Config::None {
            if let Some(sum) = report.summary(c, 0, metric) {
                let y = py(sum.median);
                let _ = writeln!(
                    s,
                    r#"<line x1="{left}" y1="{y}" x2="{right}" y2="{y}" stroke="{col}" stroke-width="2" stroke-dasharray="5,3"/>"#
                );
            }
            continue;
        }
        let pts: Vec<(f64, f64)> = ns
            .iter()
            .filter_map(|&n| {
                report
                    .summary(c, n, metric)
                    .map(|sum| (px(n), py(sum.median)))
            })
            .collect();
        if pts.is_empty() {
            continue;
        }
        let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{col}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for (x, y) in pts {
            let _ = writeln!(s, r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{col}"/>"#);
        }
    }
}

fn human(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn tick(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_is_an_svg_with_one_polyline_per_measured_configuration_and_metric() {
        let mut r = Report {
            rounds: 1,
            entries: vec![10, 1000],
            ..Default::default()
        };
        r.configs = vec![Config::None, Config::IptablesFlat];
        for m in Metric::ALL {
            r.samples.insert((Config::None, 0, m), vec![1.0]);
            r.samples.insert((Config::IptablesFlat, 10, m), vec![1.0]);
            r.samples.insert((Config::IptablesFlat, 1000, m), vec![2.0]);
        }
        let s = svg(&r);
        assert!(s.starts_with("<svg"));
        assert_eq!(s.matches("<polyline").count(), 3);
    }
}
