//! Placement: which node an instance goes to. Pure and in memory, so the
//! control plane and the benchmark run the same code.
//!
//! A node fits when it is `ready`, offers the runtime driver the app needs,
//! is in the app's region (and the organization's allowed regions), carries
//! the app's placement labels, and has the CPU, memory and an instance slot
//! free. Among the nodes that fit, the one with the fewest replicas of the
//! same app wins, then the zone with the fewest replicas of the app, then
//! the most free memory; so replicas spread across nodes and zones.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

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
///
/// Placing is indexed, not a scan of every node: each zone keeps its nodes
/// ordered by free memory, so the best node that holds no replica of the
/// app yet (the usual case: an app has far fewer replicas than a cluster
/// has nodes) is the first one that fits in the zone with the fewest of the
/// app's replicas — a few steps, whatever the number of nodes. Only when
/// every node that fits already holds a replica of the app does a placement
/// scan all nodes ([`Cluster::place_by_scan`], which also says why nothing
/// fits). Both choose the same node (a test holds them to it).
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    nodes: Vec<NodeState>,
    /// The zone (index into `zones`) of each node.
    zone_of: Vec<usize>,
    zones: Vec<String>,
    /// Per zone: its nodes, most free memory first (then lowest index).
    by_memory: Vec<BTreeSet<(Reverse<i64>, usize)>>,
    /// Per app: how many of its replicas each node holds (nodes with none
    /// absent).
    per_node: HashMap<String, HashMap<usize, i64>>,
    /// Per app: how many of its replicas each zone holds.
    per_zone: HashMap<String, Vec<i64>>,
}

impl Cluster {
    pub fn new(nodes: Vec<NodeState>) -> Cluster {
        let mut zones: Vec<String> = vec![];
        let mut zone_of = Vec::with_capacity(nodes.len());
        for n in &nodes {
            let z = match zones.iter().position(|z| *z == n.zone) {
                Some(z) => z,
                None => {
                    zones.push(n.zone.clone());
                    zones.len() - 1
                }
            };
            zone_of.push(z);
        }
        let mut by_memory = vec![BTreeSet::new(); zones.len()];
        for (i, n) in nodes.iter().enumerate() {
            by_memory[zone_of[i]].insert((Reverse(n.free_memory), i));
        }
        Cluster {
            nodes,
            zone_of,
            zones,
            by_memory,
            per_node: HashMap::new(),
            per_zone: HashMap::new(),
        }
    }

    /// The nodes, with their free figures as placed so far.
    pub fn nodes(&self) -> &[NodeState] {
        &self.nodes
    }

    /// Change node `idx`'s free resources by these amounts (keeping the
    /// index ordered).
    fn adjust(&mut self, idx: usize, memory: i64, cpu_millis: i64, slots: i64) {
        let Some(n) = self.nodes.get_mut(idx) else {
            return;
        };
        let z = self.zone_of[idx];
        self.by_memory[z].remove(&(Reverse(n.free_memory), idx));
        n.free_memory += memory;
        n.free_cpu_millis += cpu_millis;
        n.free_slots += slots;
        self.by_memory[z].insert((Reverse(n.free_memory), idx));
    }

    fn count(&mut self, app_id: &str, idx: usize, by: i64) {
        let Some(&z) = self.zone_of.get(idx) else {
            return;
        };
        if !self.per_node.contains_key(app_id) {
            self.per_node.insert(app_id.to_string(), HashMap::new());
            self.per_zone
                .insert(app_id.to_string(), vec![0; self.zones.len()]);
        }
        if let Some(m) = self.per_node.get_mut(app_id) {
            let c = m.entry(idx).or_default();
            *c = (*c + by).max(0);
            if *c == 0 {
                m.remove(&idx);
            }
        }
        if let Some(v) = self.per_zone.get_mut(app_id) {
            v[z] = (v[z] + by).max(0);
        }
    }

    /// Count an instance of `app_id` already on node `idx` (its resources
    /// are already subtracted from the node's free figures).
    pub fn count_existing(&mut self, app_id: &str, idx: usize) {
        self.count(app_id, idx, 1);
    }

    /// Resources on node `idx` are free again (an instance not counted
    /// with `count_existing` is gone).
    pub fn free(&mut self, idx: usize, memory: i64, cpu_millis: i64) {
        self.adjust(idx, memory, cpu_millis, 1);
    }

    /// An instance of `app_id` on node `idx` (counted with
    /// `count_existing`) is gone: its resources are free again.
    pub fn release(&mut self, app_id: &str, idx: usize, memory: i64, cpu_millis: i64) {
        self.free(idx, memory, cpu_millis);
        self.count(app_id, idx, -1);
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
        match self.best_without_replica(r) {
            Some((i, driver)) => Ok(self.take(r, i, driver)),
            None => self.place_by_scan(r),
        }
    }

    /// The best node that fits and holds no replica of the app yet: the
    /// lowest (replicas of the app in its zone, -free memory, index).
    fn best_without_replica(&self, r: &Request) -> Option<(usize, String)> {
        let in_zone = self.per_zone.get(&r.app_id);
        let hosting = self.per_node.get(&r.app_id);
        let mut zones: Vec<(i64, usize)> = (0..self.zones.len())
            .map(|z| (in_zone.map_or(0, |v| v[z]), z))
            .collect();
        zones.sort_unstable();
        let mut best: Option<(i64, (Reverse<i64>, usize), String)> = None;
        let mut why = Why::default();
        for (count, z) in zones {
            if best.as_ref().is_some_and(|(c, ..)| *c < count) {
                break;
            }
            for key in &self.by_memory[z] {
                let (Reverse(memory), i) = *key;
                if memory < r.memory {
                    break;
                }
                if best
                    .as_ref()
                    .is_some_and(|(c, k, _)| *c == count && *k <= *key)
                {
                    break;
                }
                if hosting.is_some_and(|h| h.contains_key(&i)) {
                    continue;
                }
                if let Some(driver) = fits(&self.nodes[i], r, &mut why) {
                    best = Some((count, *key, driver));
                    break;
                }
            }
        }
        best.map(|(_, (_, i), driver)| (i, driver))
    }

    /// Place one instance by looking at every node (the reference the
    /// index agrees with; and the way to place next to the app's other
    /// replicas, or to say why nothing fits).
    pub fn place_by_scan(&mut self, r: &Request) -> Result<Placed, String> {
        let mut best: Option<(usize, String, (i64, i64, i64))> = None;
        let mut why = Why::default();
        let in_zone = self.per_zone.get(&r.app_id);
        let hosting = self.per_node.get(&r.app_id);
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(driver) = fits(n, r, &mut why) else {
                continue;
            };
            let on_node = hosting.and_then(|h| h.get(&i)).copied().unwrap_or(0);
            let zone = in_zone.map_or(0, |v| v[self.zone_of[i]]);
            let score = (on_node, zone, -n.free_memory);
            if best.as_ref().is_none_or(|(_, _, s)| score < *s) {
                best = Some((i, driver, score));
            }
        }
        let Some((i, driver, _)) = best else {
            return Err(why.explain(self.nodes.len(), r));
        };
        Ok(self.take(r, i, driver))
    }

    fn take(&mut self, r: &Request, i: usize, driver: String) -> Placed {
        self.adjust(i, -r.memory, -r.cpu_millis, -1);
        self.count_existing(&r.app_id, i);
        Placed { node: i, driver }
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
        assert_eq!(c.nodes()[picks[1]].zone, "z2");
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

    /// The index picks exactly the node the scan of every node picks, over
    /// a long random run of placements, releases and frees on a cluster of
    /// mixed zones, sizes, drivers, labels and readiness.
    #[test]
    fn the_index_and_the_scan_agree() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let nodes: Vec<NodeState> = (0..60)
            .map(|i| {
                let mut n = node(
                    &format!("n{i}"),
                    &format!("z{}", rnd(5)),
                    (rnd(8) as i64 + 1) << 30,
                );
                n.ready = rnd(10) != 0;
                n.free_slots = rnd(6) as i64;
                n.free_cpu_millis = rnd(4000) as i64;
                if rnd(3) == 0 {
                    n.labels.insert("disk".into(), "ssd".into());
                }
                if rnd(4) == 0 {
                    n.drivers = vec!["process".into()];
                }
                n
            })
            .collect();
        let mut indexed = Cluster::new(nodes);
        let mut placed: Vec<(String, usize, i64, i64)> = vec![];
        for step in 0..3000 {
            if rnd(4) == 0 && !placed.is_empty() {
                let (app, idx, mem, cpu) = placed.swap_remove(rnd(placed.len() as u64) as usize);
                indexed.release(&app, idx, mem, cpu);
                continue;
            }
            let mut r = req(((rnd(6) + 1) as i64) << 28);
            r.app_id = format!("app{}", rnd(12));
            r.cpu_millis = rnd(600) as i64;
            if rnd(5) == 0 {
                r.labels.insert("disk".into(), "ssd".into());
            }
            if rnd(6) == 0 {
                r.driver = Some("container".into());
            }
            let mut scanned = indexed.clone();
            let by_scan = scanned.place_by_scan(&r);
            let by_index = indexed.place(&r);
            assert_eq!(by_index, by_scan, "step {step}: {r:?}");
            if let Ok(p) = by_index {
                placed.push((r.app_id.clone(), p.node, r.memory, r.cpu_millis));
            }
            for (a, b) in indexed.nodes().iter().zip(scanned.nodes()) {
                assert_eq!(
                    (a.free_memory, a.free_cpu_millis, a.free_slots),
                    (b.free_memory, b.free_cpu_millis, b.free_slots)
                );
            }
        }
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
