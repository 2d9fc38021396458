//! Placement: which node an instance goes to. Pure and in memory, so the
//! control plane and the benchmark run the same code.
//!
//! A node fits when it is `ready`, offers the runtime driver the app needs,
//! is in the app's region (and the organization's allowed regions), carries
//! the app's placement labels, and has the CPU, memory and an instance slot
//! free. Among the nodes that fit, the one with the fewest replicas of the
//! same app wins, then the zone with the fewest replicas of the app, then
//! the most free memory; so replicas spread across nodes and zones.

use std::collections::{BTreeMap, HashMap};

/// Instances a node takes at most.
pub const MAX_INSTANCES_PER_NODE: i64 = 256;

/// Strongest isolation first.
pub const DRIVER_PREFERENCE: &[&str] = &["microvm", "container", "process"];

#[derive(Debug, Clone, Default)]
pub struct NodeState {
    pub id: String,
    pub ready: bool,
    pub region: String,
    pub zone: String,
    pub drivers: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub free_cpu_millis: i64,
    pub free_memory: i64,
    pub free_slots: i64,
}

#[derive(Debug, Clone, Default)]
pub struct Request {
    pub app_id: String,
    pub memory: i64,
    pub cpu_millis: i64,
    /// The driver the app asked for; none: the node's strongest.
    pub driver: Option<String>,
    pub region: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The organization's allowed regions (empty: any).
    pub allowed_regions: Vec<String>,
    /// The app runs an image (a root filesystem). Only then is `microvm`
    /// a default: an app directory (a Procfile tarball) runs on the host's
    /// userland, which a microVM does not have.
    pub image: bool,
}

/// Where an instance went: node index and driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub node: usize,
    pub driver: String,
}

/// A cluster being filled: node states plus how many replicas of each app
/// are on each node and in each zone.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub nodes: Vec<NodeState>,
    per_node: HashMap<(String, usize), i64>,
    per_zone: HashMap<(String, String), i64>,
}

impl Cluster {
    pub fn new(nodes: Vec<NodeState>) -> Cluster {
        Cluster {
            nodes,
            ..Default::default()
        }
    }

    /// Count an instance of `app_id` already on node `idx` (its resources
    /// are already subtracted from the node's free figures).
    pub fn count_existing(&mut self, app_id: &str, idx: usize) {
        if let Some(n) = self.nodes.get(idx) {
            *self
                .per_zone
                .entry((app_id.to_string(), n.zone.clone()))
                .or_default() += 1;
            *self.per_node.entry((app_id.to_string(), idx)).or_default() += 1;
        }
    }

    /// Resources on node `idx` are free again (an instance not counted
    /// with `count_existing` is gone).
    pub fn free(&mut self, idx: usize, memory: i64, cpu_millis: i64) {
        if let Some(n) = self.nodes.get_mut(idx) {
            n.free_cpu_millis += cpu_millis;
            n.free_memory += memory;
            n.free_slots += 1;
        }
    }

    /// An instance of `app_id` on node `idx` (counted with
    /// `count_existing`) is gone: its resources are free again.
    pub fn release(&mut self, app_id: &str, idx: usize, memory: i64, cpu_millis: i64) {
        self.free(idx, memory, cpu_millis);
        let Some(n) = self.nodes.get(idx) else {
            return;
        };
        let zone = n.zone.clone();
        for c in [
            self.per_node.get_mut(&(app_id.to_string(), idx)),
            self.per_zone.get_mut(&(app_id.to_string(), zone)),
        ]
        .into_iter()
        .flatten()
        {
            *c = (*c - 1).max(0);
        }
    }

    /// Place one instance on one of the nodes with these ids only.
    pub fn place_within(&mut self, r: &Request, ids: &[String]) -> Result<Placed, String> {
        let saved: Vec<bool> = self.nodes.iter().map(|n| n.ready).collect();
        for n in &mut self.nodes {
            n.ready = n.ready && ids.contains(&n.id);
        }
        let out = self.place(r);
        for (n, ready) in self.nodes.iter_mut().zip(saved) {
            n.ready = ready;
        }
        out
    }

    /// Place one instance, updating the free figures; or say why not.
    pub fn place(&mut self, r: &Request) -> Result<Placed, String> {
        let mut best: Option<(usize, String, (i64, i64, i64))> = None;
        let mut why = Why::default();
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(driver) = fits(n, r, &mut why) else {
                continue;
            };
            let on_node = self
                .per_node
                .get(&(r.app_id.clone(), i))
                .copied()
                .unwrap_or(0);
            let in_zone = self
                .per_zone
                .get(&(r.app_id.clone(), n.zone.clone()))
                .copied()
                .unwrap_or(0);
            let score = (on_node, in_zone, -n.free_memory);
            if best.as_ref().is_none_or(|(_, _, s)| score < *s) {
                best = Some((i, driver, score));
            }
        }
        let Some((i, driver, _)) = best else {
            return Err(why.explain(self.nodes.len(), r));
        };
        let n = &mut self.nodes[i];
        n.free_cpu_millis -= r.cpu_millis;
        n.free_memory -= r.memory;
        n.free_slots -= 1;
        self.count_existing(&r.app_id, i);
        Ok(Placed { node: i, driver })
    }
}

/// Counts of why nodes did not fit, for the message.
#[derive(Debug, Default)]
struct Why {
    not_ready: usize,
    driver: usize,
    region: usize,
    labels: usize,
    cpu: usize,
    memory: usize,
    slots: usize,
}

impl Why {
    fn explain(&self, total: usize, r: &Request) -> String {
        if total == 0 {
            return "no node has joined this organization yet; register one with POST /v1/nodes and start `shellwego agent` on it".into();
        }
        let mut parts = vec![];
        let mut add = |n: usize, what: String| {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        };
        add(
            self.not_ready,
            "not ready (offline, draining or in maintenance)".into(),
        );
        add(
            self.driver,
            format!(
                "without the {} driver",
                r.driver.as_deref().unwrap_or("requested")
            ),
        );
        add(self.region, "outside the allowed region(s)".into());
        add(self.labels, "without the placement labels".into());
        add(
            self.cpu,
            format!("without {:.1} CPU free", r.cpu_millis as f64 / 1000.0),
        );
        add(
            self.memory,
            format!(
                "without {} memory free",
                crate::units::format_size(r.memory.max(0) as u64)
            ),
        );
        add(self.slots, "with no instance slot free".into());
        format!(
            "no node has room for an instance: of {total} node(s), {}",
            parts.join(", ")
        )
    }
}

fn fits(n: &NodeState, r: &Request, why: &mut Why) -> Option<String> {
    if !n.ready {
        why.not_ready += 1;
        return None;
    }
    let driver = match &r.driver {
        Some(d) if n.drivers.contains(d) => d.clone(),
        Some(_) => {
            why.driver += 1;
            return None;
        }
        None => match DRIVER_PREFERENCE
            .iter()
            .filter(|d| r.image || **d != "microvm")
            .find(|d| n.drivers.iter().any(|x| x == *d))
        {
            Some(d) => (*d).to_string(),
            None => {
                why.driver += 1;
                return None;
            }
        },
    };
    let region_ok = r.region.as_ref().is_none_or(|x| *x == n.region)
        && (r.allowed_regions.is_empty() || r.allowed_regions.contains(&n.region));
    if !region_ok {
        why.region += 1;
        return None;
    }
    if !r.labels.iter().all(|(k, v)| n.labels.get(k) == Some(v)) {
        why.labels += 1;
        return None;
    }
    if n.free_cpu_millis < r.cpu_millis {
        why.cpu += 1;
        return None;
    }
    if n.free_memory < r.memory {
        why.memory += 1;
        return None;
    }
    if n.free_slots < 1 {
        why.slots += 1;
        return None;
    }
    Some(driver)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, zone: &str, mem: i64) -> NodeState {
        NodeState {
            id: id.into(),
            ready: true,
            region: "eu".into(),
            zone: zone.into(),
            drivers: vec!["process".into(), "container".into()],
            labels: BTreeMap::new(),
            free_cpu_millis: 4000,
            free_memory: mem,
            free_slots: 10,
        }
    }

    fn req(mem: i64) -> Request {
        Request {
            app_id: "app_a".into(),
            memory: mem,
            cpu_millis: 500,
            ..Default::default()
        }
    }

    #[test]
    fn spreads_over_nodes_and_zones() {
        let mut c = Cluster::new(vec![
            node("a", "z1", 8 << 30),
            node("b", "z1", 8 << 30),
            node("c", "z2", 4 << 30),
        ]);
        let picks: Vec<usize> = (0..3)
            .map(|_| c.place(&req(1 << 30)).unwrap().node)
            .collect();
        let mut sorted = picks.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            vec![0, 1, 2],
            "three replicas on three nodes: {picks:?}"
        );
        // The second pick must be the other zone.
        assert_eq!(c.nodes[picks[1]].zone, "z2");
        assert_eq!(c.place(&req(1 << 30)).unwrap().driver, "container");
    }

    #[test]
    fn says_why_nothing_fits() {
        let mut c = Cluster::new(vec![node("a", "z1", 1 << 30)]);
        let e = c.place(&req(2 << 30)).unwrap_err();
        assert!(e.contains("1 without 2g memory free"), "{e}");
        let mut r = req(1 << 20);
        r.driver = Some("microvm".into());
        assert!(c.place(&r).unwrap_err().contains("microvm driver"));
        let mut r = req(1 << 20);
        r.labels.insert("gpu".into(), "yes".into());
        assert!(c.place(&r).unwrap_err().contains("placement labels"));
        assert!(Cluster::new(vec![])
            .place(&req(1))
            .unwrap_err()
            .contains("no node has joined"));
    }

    #[test]
    fn microvm_is_the_default_for_images_only() {
        let mut a = node("a", "z1", 8 << 30);
        a.drivers = vec!["process".into(), "container".into(), "microvm".into()];
        let mut c = Cluster::new(vec![a]);
        let mut r = req(1 << 20);
        assert_eq!(c.place(&r).unwrap().driver, "container", "an app directory");
        r.image = true;
        assert_eq!(c.place(&r).unwrap().driver, "microvm");
    }
}
