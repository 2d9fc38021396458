//! App metrics: `GET /v1/apps/{id}/metrics`, and the samples a node's
//! agent sends with its syncs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The metrics an app has, with their units.
pub const METRICS: &[(&str, &str)] = &[
    ("cpu", "percentage"),
    ("memory", "bytes"),
    ("memory_percent", "percentage"),
    ("disk", "bytes"),
    ("network_rx", "bytes_per_second"),
    ("network_tx", "bytes_per_second"),
    ("requests", "requests"),
    ("status_2xx", "requests"),
    ("status_3xx", "requests"),
    ("status_4xx", "requests"),
    ("status_5xx", "requests"),
    ("latency", "milliseconds"),
];

/// How one metric's samples of several instances (or requests) combine
/// into the app's value for a time slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// The mean (CPU %, latency).
    Mean,
    /// The sum (bytes, requests).
    Sum,
}

pub fn combine_of(metric: &str) -> Combine {
    match metric {
        "cpu" | "memory_percent" | "latency" => Combine::Mean,
        _ => Combine::Sum,
    }
}

/// The query string of `GET /v1/apps/{id}/metrics`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetricsParams {
    /// `cpu`, `memory`, `disk`, `network`, `requests` or `latency`
    /// (comma-separated for several); default: all of them.
    pub metric: Option<String>,
    /// `10s` (the last 24 h only), `1m`, `5m`, `1h` or `1d`; default:
    /// what fits about 300 points into the range.
    pub resolution: Option<String>,
    /// RFC 3339, or a time ago (`1h`); default: an hour ago.
    pub from: Option<String>,
    /// RFC 3339, or a time ago; default: now.
    pub to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DataPoint {
    /// The start of the point's time slot.
    #[schema(example = "2024-01-20T10:00:00Z")]
    pub timestamp: String,
    pub value: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Statistics {
    pub min: f64,
    pub max: f64,
    pub avg: f64,
    pub p99: f64,
}

impl Statistics {
    /// Of a series' values (zeros when it has none). p99: the nearest
    /// rank.
    pub fn of(values: &[f64]) -> Statistics {
        if values.is_empty() {
            return Statistics::default();
        }
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Statistics::default();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let rank = ((0.99 * n as f64).ceil() as usize).clamp(1, n);
        Statistics {
            min: v[0],
            max: v[n - 1],
            avg: v.iter().sum::<f64>() / n as f64,
            p99: v[rank - 1],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Series {
    #[schema(example = "percentage")]
    pub unit: String,
    pub data_points: Vec<DataPoint>,
    pub statistics: Statistics,
}

/// `GET /v1/apps/{id}/metrics`: one entry per metric asked for (`network`
/// is `network_rx` and `network_tx`; `requests` is `requests` and
/// `status_2xx` … `status_5xx`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppMetrics {
    /// Seconds per data point.
    pub resolution_seconds: i64,
    #[serde(flatten)]
    pub series: BTreeMap<String, Series>,
}

// --- between a node's agent and the control plane ---

/// One sample of an instance (or of the node itself), taken every 10 s.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Sample {
    /// None: the node itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Microseconds since the epoch.
    pub at: i64,
    /// Of the instance's CPU allocation (of the node's cores, for a node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<f64>,
    /// Of the instance's memory limit (of the node's memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<f64>,
    /// Of the node's data file system (nodes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_rx: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_tx: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_of_a_known_series() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        let s = Statistics::of(&v);
        assert_eq!((s.min, s.max, s.avg, s.p99), (1.0, 200.0, 100.5, 198.0));
        let s = Statistics::of(&[5.0]);
        assert_eq!((s.min, s.max, s.avg, s.p99), (5.0, 5.0, 5.0, 5.0));
        assert_eq!(Statistics::of(&[]), Statistics::default());
        let s = Statistics::of(&[3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!((s.min, s.max, s.avg, s.p99), (1.0, 3.0, 2.0, 3.0));
    }
}
