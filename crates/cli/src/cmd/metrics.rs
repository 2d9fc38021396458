//! `shellwego metrics --app APP [--metric cpu,memory] [--since 1h]
//! [--resolution 1m]`: an app's usage over time, one row per metric with
//! its latest value, statistics and a chart of its points.

use clap::Args;
use shellwego_api::metrics::{AppMetrics, Series};
use shellwego_core::units::format_size;

use crate::cmd::{ClientArgs, Ctx};
use crate::output::{emit, json, Output};

#[derive(Debug, Args)]
pub struct MetricsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The app (name or id).
    #[arg(long)]
    pub app: String,
    /// cpu, memory, disk, network, requests, latency (comma-separated)
    /// [default: all].
    #[arg(long, value_name = "METRICS")]
    pub metric: Option<String>,
    /// From this time: RFC 3339 or a time ago (15m, 1h, 7d).
    #[arg(long, default_value = "1h", value_name = "TIME")]
    pub since: String,
    /// Up to this time [default: now].
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// 10s, 1m, 5m, 1h or 1d [default: about 300 points in the range].
    #[arg(long, value_name = "RESOLUTION")]
    pub resolution: Option<String>,
}

/// A one-line chart of the values (at most `width` characters: each a
/// mean of its points).
pub fn sparkline(values: &[f64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    if values.is_empty() || width == 0 {
        return String::new();
    }
    let per = values.len().div_ceil(width);
    let cols: Vec<f64> = values
        .chunks(per)
        .map(|c| c.iter().sum::<f64>() / c.len() as f64)
        .collect();
    let (lo, hi) = cols
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
    cols.iter()
        .map(|v| {
            if (hi - lo).abs() < f64::EPSILON {
                BARS[if hi > 0.0 { 3 } else { 0 }]
            } else {
                BARS[(((v - lo) / (hi - lo)) * 7.0).round() as usize]
            }
        })
        .collect()
}

fn show(unit: &str, v: f64) -> String {
    match unit {
        "bytes" => format_size(v.max(0.0) as u64),
        "bytes_per_second" => format!("{}/s", format_size(v.max(0.0) as u64)),
        "percentage" => format!("{v:.1}%"),
        "milliseconds" => format!("{v:.1} ms"),
        _ => format!("{v:.0}"),
    }
}

fn row(name: &str, s: &Series) -> Vec<String> {
    let values: Vec<f64> = s.data_points.iter().map(|p| p.value).collect();
    let last = values.last().map_or("-".into(), |v| show(&s.unit, *v));
    let st = &s.statistics;
    let stat = |v: f64| {
        if values.is_empty() {
            "-".to_string()
        } else {
            show(&s.unit, v)
        }
    };
    vec![
        name.to_string(),
        last,
        stat(st.min),
        stat(st.avg),
        stat(st.max),
        stat(st.p99),
        sparkline(&values, 40),
    ]
}

pub async fn run(args: MetricsArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&args.client, false)?;
    ctx.client.require_token()?;
    let (id, _) = crate::cmd::apps::resolve(&ctx.client, &args.app).await?;
    let mut query: Vec<(&str, String)> = vec![("from", args.since.clone())];
    for (k, v) in [
        ("to", &args.until),
        ("metric", &args.metric),
        ("resolution", &args.resolution),
    ] {
        if let Some(v) = v {
            query.push((k, v.clone()));
        }
    }
    let r = ctx.client.apps().metrics(&id, &query).await?;
    if ctx.output == Output::Json {
        return emit(&json(r.body())?);
    }
    let m: AppMetrics = r.into_inner();
    let mut rows = vec![vec![
        "METRIC".to_string(),
        "LATEST".into(),
        "MIN".into(),
        "AVG".into(),
        "MAX".into(),
        "P99".into(),
        format!("EVERY {}s", m.resolution_seconds),
    ]];
    for (name, s) in &m.series {
        rows.push(row(name, s));
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    emit(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_to_the_range() {
        assert_eq!(
            sparkline(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], 8),
            "▁▂▃▄▅▆▇█"
        );
        assert_eq!(sparkline(&[1.0, 1.0, 3.0, 3.0], 2), "▁█");
        assert_eq!(sparkline(&[2.0, 2.0], 10), "▄▄");
        assert_eq!(sparkline(&[], 10), "");
    }
}
