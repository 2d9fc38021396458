//! A fake node agent: it joins with a join token and syncs over the real
//! agent channel, and reports what the test says (no instance runs).
//! Typed over the agent-channel types of `shellwego_api`, re-exported
//! here so that tests name them through the kit.

use std::time::Duration;

use serde_json::{json, Value};

// The one place the kit names the agent channel's module.
pub use shellwego_api::agent::{
    AgentDesired, AgentEvent, AgentJoin, AgentJoined, AgentSync, DesiredHealthCheck,
    DesiredInstance, InstanceReport, SsrfPolicy,
};

/// The port a fake instance "listens" on when the test does not say.
pub const PORT: u16 = 4567;

/// A report of an instance in `status` (`healthy`, `crashed`, …); the
/// rest is filled in by [`FakeAgent::report`] or spread over with
/// `InstanceReport { restarts: 1, ..report("crashed") }`.
pub fn report(status: &str) -> InstanceReport {
    InstanceReport {
        status: status.to_string(),
        ..Default::default()
    }
}

/// A sync that only asks for the desired state: generation -1 (whatever
/// the node has, send it), held at most a second.
pub fn ask() -> AgentSync {
    AgentSync {
        generation: -1,
        wait_secs: Some(1),
        ..Default::default()
    }
}

/// A joined node, as its agent.
#[derive(Clone, Debug)]
pub struct FakeAgent {
    pub node_id: String,
    /// `nsec_…`: its credential on the agent channel.
    pub credential: String,
    /// The address sent with [`FakeAgent::report`] (`internal_ip`); none by default.
    pub internal_ip: Option<String>,
    base: String,
    http: reqwest::Client,
}

impl FakeAgent {
    /// What a small fake machine reports when it joins: `cores` CPUs,
    /// `memory` bytes (all available), 100 GiB of disk, the process
    /// driver, zone `<name>-zone`.
    pub fn machine(join_token: &str, name: &str, cores: i64, memory: i64) -> AgentJoin {
        AgentJoin {
            join_token: join_token.to_string(),
            hostname: name.to_string(),
            cpu_cores: cores,
            memory_total: memory,
            memory_available: memory,
            disk_total: 100 << 30,
            drivers: vec!["process".into()],
            zone: Some(format!("{name}-zone")),
            ..Default::default()
        }
    }

    /// Register a node named `name` in region `eu` as the holder of
    /// `admin_token`, and join it as [`FakeAgent::machine`].
    pub async fn register(
        base: &str,
        admin_token: &str,
        name: &str,
        cores: i64,
        memory: i64,
    ) -> FakeAgent {
        let http = reqwest::Client::new();
        let r = http
            .post(format!("{base}/v1/nodes"))
            .bearer_auth(admin_token)
            .json(&json!({"hostname": name, "region": "eu"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "register node {name}");
        let reg: Value = r.json().await.unwrap();
        let token = reg["join_token"].as_str().unwrap();
        let mut a = FakeAgent::join(base, &FakeAgent::machine(token, name, cores, memory)).await;
        assert_eq!(a.node_id, reg["id"].as_str().unwrap());
        a.http = http;
        a
    }

    /// Join with `join` (`POST /v1/agent/join`); panics unless it is accepted.
    pub async fn join(base: &str, join: &AgentJoin) -> FakeAgent {
        let http = reqwest::Client::new();
        let r = http
            .post(format!("{base}/v1/agent/join"))
            .json(join)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        assert_eq!(status, 200, "join: {text}");
        let joined: AgentJoined = serde_json::from_str(&text).unwrap();
        FakeAgent {
            node_id: joined.node_id,
            credential: joined.credential,
            internal_ip: None,
            base: base.to_string(),
            http,
        }
    }

    /// The same node's agent presenting `credential` instead (a test of
    /// the channel's authentication).
    /// The same node, talking to the control-plane replica at `base`.
    pub fn at(&self, base: &str) -> FakeAgent {
        FakeAgent {
            base: base.to_string(),
            ..self.clone()
        }
    }

    pub fn with_credential(&self, credential: &str) -> FakeAgent {
        FakeAgent {
            credential: credential.to_string(),
            ..self.clone()
        }
    }

    /// `POST /v1/agent/sync` with any body (a test of the channel's own
    /// errors sends what no agent would).
    pub async fn sync_raw(&self, body: &impl serde::Serialize) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/agent/sync", self.base))
            .bearer_auth(&self.credential)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// `POST /v1/agent/resolve` for `instance_id`: (status, body).
    pub async fn resolve(&self, instance_id: &str, name: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}/v1/agent/resolve", self.base))
            .bearer_auth(&self.credential)
            .json(&serde_json::json!({"instance_id": instance_id, "name": name}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or_default())
    }

    /// One sync; panics unless it is accepted. The node's desired state.
    pub async fn sync(&self, body: &AgentSync) -> AgentDesired {
        let r = self.sync_raw(body).await;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        assert_eq!(status, 200, "sync: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("sync: {e}: {text}"))
    }

    /// What the node should run ([`ask`]).
    pub async fn desired(&self) -> AgentDesired {
        self.sync(&ask()).await
    }

    /// What the node should run of `app`.
    pub async fn desired_of(&self, app: &str) -> Vec<DesiredInstance> {
        self.desired()
            .await
            .instances
            .into_iter()
            .filter(|i| i.app_id == app)
            .collect()
    }

    /// Report every instance the node should run, each as `status` says
    /// (its id filled in, and its port when not given), at the generation
    /// just received; how many were reported.
    pub async fn report(&self, status: impl Fn(&DesiredInstance) -> InstanceReport) -> usize {
        let d = self.desired().await;
        let reports: Vec<InstanceReport> = d
            .instances
            .iter()
            .map(|i| {
                let mut r = status(i);
                r.id = i.id.clone();
                r.port = r.port.or(Some(PORT));
                r
            })
            .collect();
        let n = reports.len();
        self.sync(&AgentSync {
            generation: d.generation,
            wait_secs: Some(1),
            internal_ip: self.internal_ip.clone(),
            instances: Some(reports),
            ..Default::default()
        })
        .await;
        n
    }

    /// Report every instance the node should run as healthy (pid 42).
    pub async fn report_healthy(&self) -> usize {
        self.report(|_| InstanceReport {
            pid: Some(42),
            ..report("healthy")
        })
        .await
    }

    /// Keep the node alive while a test waits (a test server's node
    /// timeout is 2 s): a sync with no reports every 300 ms until the
    /// returned task is aborted.
    pub fn heartbeat(&self) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let _ = me.sync_raw(&ask()).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    }
}
