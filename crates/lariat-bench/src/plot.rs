//! The side-by-side plot: the headline metrics as grouped bars (lariat, naive, actix), each
//! normalised to lariat = 1.0, written as a hand-made SVG (no plotting dependency).
//!
//! The axis is linear and stops at [`CAP`]: a longer bar (lariat's memory per idle connection is
//! a small number, so the others' ratios to it can be large) is cut at the top, marked with a
//! break, and labelled with its real ratio. Every bar carries its ratio; each bar's tooltip and
//! each group's caption give the medians themselves.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::report::{Metric, Row};
use crate::server::Kind;

/// The highest ratio the axis shows.
const CAP: f64 = 3.0;

const WIDTH: f64 = 840.0;
const HEIGHT: f64 = 460.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 90.0;
const BOTTOM: f64 = 100.0;

/// The metrics plotted, with their caption, which way is better, and their unit.
const GROUPS: [(Metric, &str, &str, &str); 4] = [
    (
        Metric::ChurnRate,
        "churn rate",
        "higher is better",
        "conn/s",
    ),
    (
        Metric::CpuPerConnection,
        "server CPU per conn.",
        "lower is better",
        "µs",
    ),
    (
        Metric::IdleBytes,
        "memory per idle conn.",
        "lower is better",
        "B",
    ),
    (
        Metric::Throughput,
        "echo throughput",
        "higher is better",
        "MB/s",
    ),
];

/// The servers of each group, in order, with their colour.
const SERVERS: [(Kind, &str); 3] = [
    (Kind::Lariat, "#2b6cb0"),
    (Kind::Naive, "#8a8a8a"),
    (Kind::Actix, "#dd7a1f"),
];

fn median_of(row: &Row, kind: Kind) -> Option<f64> {
    match kind {
        Kind::Lariat => row.lariat_median,
        Kind::Naive => row.naive_median,
        Kind::Actix => row.actix_median,
        Kind::LariatDelivery(_) | Kind::LariatScale(_) | Kind::LariatMetrics => None,
    }
}

/// The SVG text for `rows` (the rows against naive of the four headline metrics; the others are
/// ignored), with `subtitle` under the title.
pub fn svg(rows: &[Row], subtitle: &str) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let base_y = TOP + plot_h;

    // (metric caption, better, unit, lariat's median, per server: (median, ratio))
    type Bars = Vec<(Kind, &'static str, Option<f64>, Option<f64>)>;
    let groups: Vec<(&str, &str, &str, Option<f64>, Bars)> = GROUPS
        .iter()
        .map(|&(metric, caption, better, unit)| {
            let row = rows
                .iter()
                .find(|r| r.metric == metric && r.baseline.is_none());
            let lariat = row.and_then(|r| r.lariat_median);
            let bars = SERVERS
                .iter()
                .map(|&(kind, colour)| {
                    let value = row.and_then(|r| median_of(r, kind));
                    let ratio = match (value, lariat) {
                        (Some(v), Some(l)) if l > 0.0 && v.is_finite() => Some(v / l),
                        _ => None,
                    };
                    (kind, colour, value, ratio)
                })
                .collect();
            (caption, better, unit, lariat, bars)
        })
        .collect();

    let highest = groups
        .iter()
        .flat_map(|g| g.4.iter().filter_map(|b| b.3))
        .fold(1.0_f64, f64::max);
    let top = ((highest * 2.0).ceil() / 2.0).clamp(1.5, CAP);
    let y = |ratio: f64| base_y - plot_h * (ratio.clamp(0.0, top) / top);

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r##"<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="16" font-weight="bold">lariat, naive tokio echo and actix-server echo, normalised to lariat = 1.0</text>"#,
        WIDTH / 2.0
    );
    let _ = writeln!(
        out,
        r##"<text x="{}" y="42" text-anchor="middle" fill="#555555">{}</text>"##,
        WIDTH / 2.0,
        escape(subtitle)
    );

    // Legend.
    let mut lx = WIDTH / 2.0 - 150.0;
    for (kind, colour) in SERVERS {
        let _ = writeln!(
            out,
            r#"<rect x="{lx}" y="56" width="14" height="14" fill="{colour}"/><text x="{}" y="67">{}</text>"#,
            lx + 20.0,
            legend(kind)
        );
        lx += 110.0;
    }

    // Axis, grid and the lariat = 1.0 line.
    let mut tick = 0.0;
    while tick <= top + 1e-9 {
        let ty = y(tick);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{ty:.1}" x2="{}" y2="{ty:.1}" stroke="#e2e2e2"/><text x="{}" y="{:.1}" text-anchor="end" fill="#555555">{tick:.1}×</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            ty + 4.0
        );
        tick += 0.5;
    }
    let one = y(1.0);
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{one:.1}" x2="{}" y2="{one:.1}" stroke="#2b6cb0" stroke-dasharray="4 3"/>"##,
        WIDTH - RIGHT
    );
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base_y}" stroke="#333333"/><line x1="{LEFT}" y1="{base_y}" x2="{}" y2="{base_y}" stroke="#333333"/>"##,
        WIDTH - RIGHT
    );

    let group_w = plot_w / groups.len() as f64;
    let bar_w = group_w * 0.2;
    for (i, (caption, better, unit, lariat, bars)) in groups.iter().enumerate() {
        let centre = LEFT + group_w * (i as f64 + 0.5);
        for (j, (kind, colour, value, ratio)) in bars.iter().enumerate() {
            let x = centre + (j as f64 - 1.5) * bar_w + (j as f64 - 1.0) * 4.0;
            let label_x = x + bar_w / 2.0;
            let Some(ratio) = ratio else {
                let _ = writeln!(
                    out,
                    r##"<text x="{label_x:.1}" y="{:.1}" text-anchor="middle" fill="#999999">n/a</text>"##,
                    base_y - 6.0
                );
                continue;
            };
            let top_y = y(*ratio);
            let tooltip = format!(
                "{}: {} {unit} ({ratio:.2}× lariat)",
                kind,
                value.map_or("n/a".to_string(), format_value)
            );
            let _ = writeln!(
                out,
                r#"<rect x="{x:.1}" y="{top_y:.1}" width="{bar_w:.1}" height="{:.1}" fill="{colour}"><title>{}</title></rect>"#,
                base_y - top_y,
                escape(&tooltip)
            );
            if *ratio > top {
                // The break: a white zigzag across the bar, just under the top.
                let zy = top_y + 10.0;
                let _ = writeln!(
                    out,
                    r##"<polyline points="{:.1},{:.1} {:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" fill="none" stroke="#ffffff" stroke-width="3"/>"##,
                    x - 1.0,
                    zy + 3.0,
                    x + bar_w / 3.0,
                    zy - 3.0,
                    x + 2.0 * bar_w / 3.0,
                    zy + 3.0,
                    x + bar_w + 1.0,
                    zy - 3.0
                );
            }
            let _ = writeln!(
                out,
                r#"<text x="{label_x:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"#,
                top_y - 5.0,
                format_ratio(*ratio)
            );
        }
        let lines = [
            (caption.to_string(), "#222222"),
            (format!("({better})"), "#555555"),
            (
                lariat.map_or("not measured".to_string(), |l| {
                    format!("lariat = {} {unit}", format_value(l))
                }),
                "#2b6cb0",
            ),
        ];
        for (k, (text, colour)) in lines.iter().enumerate() {
            let _ = writeln!(
                out,
                r#"<text x="{centre:.1}" y="{:.1}" text-anchor="middle" fill="{colour}"{}>{}</text>"#,
                base_y + 20.0 + 16.0 * k as f64,
                if k == 0 { r#" font-weight="bold""# } else { "" },
                escape(text)
            );
        }
    }
    let footer = if highest > top {
        format!("medians; bars past {top:.1}× are cut (marked with a break) and labelled with their ratio")
    } else {
        "medians of the rounds".to_string()
    };
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="{}" font-size="10" fill="#777777">{footer}</text>"##,
        HEIGHT - 10.0
    );
    out.push_str("</svg>\n");
    out
}

/// Whether `rows` has anything to plot: a row against naive of one of the plotted metrics.
pub fn has_data(rows: &[Row]) -> bool {
    rows.iter()
        .any(|r| r.baseline.is_none() && GROUPS.iter().any(|g| g.0 == r.metric))
}

/// Writes the plot of `rows` to `path`, creating its directory.
pub fn write(path: &Path, rows: &[Row], subtitle: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, svg(rows, subtitle)).with_context(|| format!("writing {}", path.display()))
}

fn legend(kind: Kind) -> &'static str {
    match kind {
        Kind::Lariat => "lariat",
        Kind::Naive => "naive-echo",
        Kind::Actix => "actix-echo",
        Kind::LariatDelivery(_) => "lariat --delivery",
        Kind::LariatScale(_) => "lariat serve",
        Kind::LariatMetrics => "lariat --metrics",
    }
}

fn format_ratio(ratio: f64) -> String {
    if ratio >= 10.0 {
        format!("{ratio:.0}×")
    } else {
        format!("{ratio:.2}×")
    }
}

fn format_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{self, Sample};

    fn sample(server: Kind, metrics: Vec<(Metric, f64)>) -> Sample {
        Sample::for_test(server, metrics)
    }

    #[test]
    fn normalised_bars_with_a_cut() {
        let samples = [
            sample(
                Kind::Naive,
                vec![(Metric::ChurnRate, 900.0), (Metric::IdleBytes, 9000.0)],
            ),
            sample(
                Kind::Lariat,
                vec![(Metric::ChurnRate, 1000.0), (Metric::IdleBytes, 600.0)],
            ),
            sample(
                Kind::Actix,
                vec![(Metric::ChurnRate, 1100.0), (Metric::IdleBytes, 7200.0)],
            ),
        ];
        let rows = report::rows(&samples);
        let text = svg(&rows, "a <test> & more");
        assert!(text.starts_with("<svg "), "{text}");
        assert!(text.ends_with("</svg>\n"));
        assert!(
            text.contains(">0.90×<") && text.contains(">1.10×<"),
            "{text}"
        );
        // 9000 / 600 = 15: cut at the top, with a break, labelled with the real ratio.
        assert!(
            text.contains(">15×<") && text.contains("<polyline"),
            "{text}"
        );
        assert!(text.contains(">12×<"), "{text}");
        assert!(text.contains("lariat = 1000 conn/s"), "{text}");
        assert!(text.contains("a &lt;test&gt; &amp; more"));
        // No throughput or CPU rows: n/a bars.
        assert_eq!(text.matches(">n/a<").count(), 6, "{text}");
    }
}
