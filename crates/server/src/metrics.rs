//! Prometheus metrics: request count and latency by route template and
//! status, served as text at `GET /metrics`.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The route template (`/v1/nodes/{node_id}`), or `unmatched`.
    pub route: String,
    pub status: u16,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms … ~8 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    leader: Family<ControllerLabels, Gauge>,
    log_follows: Gauge,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("shellwego");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register("http_requests", "HTTP requests handled", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            latency.clone(),
        );
        let leader = Family::<ControllerLabels, Gauge>::default();
        registry.register(
            "controller_leader",
            "1 when this replica leads the singleton controller",
            leader.clone(),
        );
        let log_follows = Gauge::default();
        registry.register(
            "log_follows_open",
            "Log follow streams (SSE, WebSocket) held open by this process",
            log_follows.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            leader,
            log_follows,
            requests,
            latency,
        }
    }

    pub fn observe(&self, labels: RequestLabels, elapsed: Duration) {
        self.latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        self.requests.get_or_create(&labels).inc();
    }

    /// The Prometheus text exposition, with which singleton controllers
    /// this replica leads.
    pub fn render(&self, leading: &[(&str, bool)]) -> String {
        for (name, leads) in leading {
            self.leader
                .get_or_create(&ControllerLabels {
                    controller: name.to_string(),
                })
                .set(i64::from(*leads));
        }
        self.log_follows.set(crate::service::logs::open_follows());
        let mut out = String::new();
        if let Ok(reg) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        }
        out
    }
}
