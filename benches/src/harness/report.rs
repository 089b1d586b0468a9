//! Results as a table on stdout, CSV, JSON and an SVG latency-throughput chart.

use std::fmt::Write as _;

use anyhow::Context;
use serde_json::json;

use super::cli::Args;
use super::measure::{Load, Measurement};
use super::model::ModelInfo;

fn load_label(load: &Load) -> String {
    match load {
        Load::Concurrency(c) => format!("c={c}"),
        Load::Rate(r) => format!("{r}/s"),
    }
}

/// Prints one table row (and the header before the first).
pub fn print_row(m: &Measurement, header: bool) {
    if header {
        println!(
            "{:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7}",
            "load", "infer/s", "mean ms", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "errors", "stable"
        );
    }
    println!(
        "{:>10} {:>11.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>8} {:>7}",
        load_label(&m.load),
        m.throughput,
        m.mean_ms,
        m.p50_ms,
        m.p90_ms,
        m.p95_ms,
        m.p99_ms,
        m.errors,
        if m.stable { "yes" } else { "no" }
    );
    if let Some(s) = &m.server {
        let latency = match (s.p50_us, s.p99_us) {
            (Some(p50), Some(p99)) => format!("; latency p50 {p50:.1} us, p99 {p99:.1} us"),
            _ => String::new(),
        };
        println!(
            "{:>10} server: queue {:.1} us, compute {:.1} us per request; {:.1} items per execution{latency}",
            "", s.queue_us, s.compute_us, s.batch
        );
    }
}

/// CSV with one row per point.
pub fn csv(results: &[Measurement]) -> String {
    let mut out = String::from(
        "load_kind,load,infer_per_sec,mean_ms,p50_ms,p90_ms,p95_ms,p99_ms,requests,errors,stable,server_queue_us,server_compute_us,server_batch,server_p50_us,server_p99_us\n",
    );
    for m in results {
        let (kind, value) = match m.load {
            Load::Concurrency(c) => ("concurrency", c as f64),
            Load::Rate(r) => ("rate", r),
        };
        let optional = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_default();
        let server = m
            .server
            .map(|s| {
                format!(
                    "{:.2},{:.2},{:.2},{},{}",
                    s.queue_us,
                    s.compute_us,
                    s.batch,
                    optional(s.p50_us),
                    optional(s.p99_us)
                )
            })
            .unwrap_or_else(|| ",,,,".into());
        let _ = writeln!(
            out,
            "{kind},{value},{:.2},{:.4},{:.4},{:.4},{:.4},{:.4},{},{},{},{server}",
            m.throughput, m.mean_ms, m.p50_ms, m.p90_ms, m.p95_ms, m.p99_ms, m.requests, m.errors, m.stable
        );
    }
    out
}

/// An SVG chart: p50 and p99 latency against throughput, one labelled point per load.
pub fn svg(title: &str, results: &[Measurement]) -> String {
    let (w, h, left, right, top, bottom) = (760.0, 440.0, 70.0, 30.0, 50.0, 60.0);
    let (step_x, ticks_x) = nice_axis(results.iter().map(|m| m.throughput).fold(1.0, f64::max));
    let (step_y, ticks_y) = nice_axis(results.iter().map(|m| m.p99_ms).fold(0.001, f64::max));
    let (max_x, max_y) = (step_x * ticks_x as f64, step_y * ticks_y as f64);
    let x = |v: f64| left + v / max_x * (w - left - right);
    let y = |v: f64| h - bottom - v / max_y * (h - top - bottom);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{}" y="24" font-size="15" text-anchor="middle">{}</text>"#, w / 2.0, escape(title));
    for i in 0..=ticks_x {
        let vx = step_x * i as f64;
        let _ = writeln!(s, r##"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="#ddd"/>"##, x(vx), top, h - bottom);
        let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, x(vx), h - bottom + 16.0, vx);
    }
    for i in 0..=ticks_y {
        let vy = step_y * i as f64;
        let _ = writeln!(s, r##"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="#ddd"/>"##, left, y(vy), w - right);
        let _ =
            writeln!(s, r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#, left - 6.0, y(vy) + 4.0, format_tick(vy));
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">throughput (infer/s)</text>"#,
        (left + w - right) / 2.0,
        h - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {}) rotate(-90)" text-anchor="middle">latency (ms)</text>"#,
        (top + h - bottom) / 2.0
    );
    for (name, color, pick) in [("p50", "#1f77b4", 0usize), ("p99", "#d62728", 1usize)] {
        let value = |m: &Measurement| if pick == 0 { m.p50_ms } else { m.p99_ms };
        let points: Vec<String> =
            results.iter().map(|m| format!("{:.1},{:.1}", x(m.throughput), y(value(m)))).collect();
        let _ =
            writeln!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, points.join(" "));
        for m in results {
            let _ =
                writeln!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"/>"#, x(m.throughput), y(value(m)));
            if pick == 1 {
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
                    x(m.throughput) + 5.0,
                    y(value(m)) - 6.0,
                    escape(&load_label(&m.load))
                );
            }
        }
        let ly = top + 10.0 + 18.0 * pick as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"/>"#,
            left + 10.0,
            left + 34.0
        );
        let _ = writeln!(s, r#"<text x="{}" y="{}">{name} latency</text>"#, left + 40.0, ly + 4.0);
    }
    s.push_str("</svg>\n");
    s
}

/// A round tick step (1, 2 or 5 times a power of ten) and the number of ticks that cover `max`.
fn nice_axis(max: f64) -> (f64, usize) {
    let raw = (max / 5.0).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|&s| s >= raw).unwrap_or(10.0 * magnitude);
    (step, ((max / step).ceil() as usize).max(1))
}

fn format_tick(v: f64) -> String {
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Writes the CSV, JSON and SVG files the flags ask for.
pub fn write_outputs(args: &Args, model: &ModelInfo, results: &[Measurement]) -> anyhow::Result<()> {
    if let Some(path) = &args.csv {
        std::fs::write(path, csv(results)).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        let doc = json!({
            "model": model.name,
            "url": args.url,
            "protocol": format!("{:?}", args.protocol),
            "batch_size": args.batch_size,
            "results": results,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        let title = format!("{} over {:?}, batch {} ({})", model.name, args.protocol, args.batch_size, args.url);
        std::fs::write(path, svg(&title, results)).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_use_round_steps() {
        assert_eq!(nice_axis(48_472.0), (10_000.0, 5));
        assert_eq!(nice_axis(2.15), (0.5, 5));
        assert_eq!(nice_axis(0.9), (0.2, 5));
        assert_eq!(format_tick(0.5), "0.5");
        assert_eq!(format_tick(2.0), "2");
    }
}
