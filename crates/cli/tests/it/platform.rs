//! The whole platform on one machine (`shellwego up`): apps deployed from
//! an uploaded tarball and from an OCI image in a real registry, served
//! through the ingress, restarted when they crash, and re-adopted (same
//! instances, same processes) when everything is SIGKILLed and restarted.

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_shellwego");
const HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/hello");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Up {
    child: Option<Child>,
    dir: PathBuf,
    api: u16,
    ingress: u16,
    token: String,
    http: reqwest::blocking::Client,
}

impl Up {
    fn start(dir: &Path, api: u16, ingress: u16, extra: &[&str]) -> Up {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("up.log"))
            .unwrap();
        let child = Command::new(BIN)
            .arg("up")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args([
                "--listen",
                &format!("127.0.0.1:{api}"),
                "--ingress-listen",
                &format!("127.0.0.1:{ingress}"),
            ])
            .args(extra)
            .env("SHELLWEGO_LOG", "info,sqlx=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let tok_path = dir.join("data/admin-token");
        let t = Instant::now();
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        loop {
            let ready = http
                .get(format!("http://127.0.0.1:{api}/readyz"))
                .send()
                .is_ok_and(|r| r.status() == 200);
            if ready && tok_path.exists() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "up did not start: {}",
                Self::log_of(dir)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Up {
            child: Some(child),
            dir: dir.to_path_buf(),
            api,
            ingress,
            token: std::fs::read_to_string(tok_path)
                .unwrap()
                .trim()
                .to_string(),
            http,
        }
    }

    fn log_of(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("up.log")).unwrap_or_default()
    }

    fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("http://127.0.0.1:{}{path}", self.api))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().unwrap();
        let st = r.status().as_u16();
        (st, r.json().unwrap_or(Value::Null))
    }

    fn get(&self, path: &str) -> Value {
        self.api(reqwest::Method::GET, path, None).1
    }

    /// GET through the ingress as `<app>.localhost`.
    fn through_ingress(&self, app: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("http://127.0.0.1:{}/", self.ingress))
            .header("Host", format!("{app}.localhost"))
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    }

    fn wait_app(&self, id: &str, what: &str, secs: u64, ok: impl Fn(&Value) -> bool) -> Value {
        let t = Instant::now();
        loop {
            let a = self.get(&format!("/v1/apps/{id}"));
            if ok(&a) {
                return a;
            }
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "{what}: {a:#}\n{}",
                Self::log_of(&self.dir)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn sigterm(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.sigkill();
    }
}

fn healthy(a: &Value, n: usize) -> bool {
    a["status"] == "running" && a["replicas"]["healthy"] == n as i64
}

/// pid of an instance, from the agent's saved state.
fn pid_of(dir: &Path, inst: &str) -> Option<u32> {
    let s = std::fs::read_to_string(dir.join(format!("data/agent/instances/{inst}/state.json")))
        .ok()?;
    let v: Value = serde_json::from_str(&s).ok()?;
    v["running"]["pid"].as_u64().map(|p| p as u32)
}

/// Processes whose environment says they are an instance of `app_id`.
fn processes_of(app_id: &str) -> Vec<u32> {
    let needle = format!("SHELLWEGO_APP_ID={app_id}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .collect()
}

fn delete_and_wait_gone(up: &Up, id: &str) {
    let (st, _) = up.api(reqwest::Method::DELETE, &format!("/v1/apps/{id}"), None);
    assert_eq!(st, 204);
    let t = Instant::now();
    while !processes_of(id).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "instances of a deleted app still run"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn instance_ids(a: &Value) -> Vec<String> {
    let mut v: Vec<String> = a["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn a_tarball_app_serves_through_the_ingress_survives_crashes_and_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let (api, ingress) = (free_port(), free_port());
    let mut up = Up::start(tmp.path(), api, ingress, &["--runtime", "process"]);
    let archive = tmp.path().join("hello.tgz");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(HELLO)
        .arg("-czf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let r = up
        .http
        .post(format!("http://127.0.0.1:{api}/v1/uploads"))
        .bearer_auth(&up.token)
        .body(std::fs::read(&archive).unwrap())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let upload: Value = r.json().unwrap();
    let t0 = Instant::now();
    let (st, created) = up.api(
        reqwest::Method::POST,
        "/v1/apps",
        Some(json!({"name": "hello", "replicas": 2, "source": {"type": "tarball", "upload_id": upload["upload_id"]},
            "health_check": {"path": "/health", "interval": "1s"}})),
    );
    assert_eq!(st, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let a = up.wait_app(&id, "2 healthy replicas", 60, |a| healthy(a, 2));
    println!("create to healthy: {:?}", t0.elapsed());
    // Through the ingress, alternating over the replicas.
    let seen: Vec<String> = (0..4)
        .map(|_| {
            let (st, body) = up.through_ingress("hello");
            assert_eq!(st, 200, "{body}");
            serde_json::from_str::<Value>(&body).unwrap()["instance"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_ne!(seen[0], seen[1], "round-robin: {seen:?}");
    assert_eq!(seen[0], seen[2]);
    assert_eq!(seen[1], seen[3]);
    let mut both = seen[..2].to_vec();
    both.sort();
    assert_eq!(both, instance_ids(&a));
    // An unknown app is a 404, a known app with nothing healthy a 503.
    assert_eq!(up.through_ingress("nope").0, 404);

    // Kill an instance's process: the agent restarts it, the app is
    // healthy again, and an app.crashed event says so.
    let victim = instance_ids(&a)[0].clone();
    let pid = pid_of(tmp.path(), &victim).unwrap();
    assert!(Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success());
    let a = up.wait_app(&id, "restarted after a crash", 60, |a| {
        healthy(a, 2)
            && a["instances"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["id"] == victim.as_str() && i["restarts"] == 1)
    });
    assert_ne!(pid_of(tmp.path(), &victim), Some(pid));
    let ev = up.get(&format!(
        "/v1/events?filter[type]=app.crashed&filter[resource_id]={id}"
    ));
    assert_eq!(ev["data"].as_array().unwrap().len(), 1, "{ev}");
    assert_eq!(ev["data"][0]["metadata"]["instance_id"], victim.as_str());
    assert!(
        ev["data"][0]["metadata"]["reason"]
            .as_str()
            .unwrap()
            .contains("signal 9"),
        "{ev}"
    );

    // SIGKILL everything (control plane, agent, ingress) and start again:
    // same instances, same processes still serving, no duplicates.
    let before = instance_ids(&a);
    let pids: Vec<u32> = before
        .iter()
        .map(|i| pid_of(tmp.path(), i).unwrap())
        .collect();
    up.sigkill();
    let mut up = Up::start(tmp.path(), api, ingress, &["--runtime", "process"]);
    let a = up.wait_app(&id, "healthy after a restart", 60, |a| healthy(a, 2));
    assert_eq!(instance_ids(&a), before);
    let after: Vec<u32> = before
        .iter()
        .map(|i| pid_of(tmp.path(), i).unwrap())
        .collect();
    assert_eq!(after, pids, "the same processes were re-adopted");
    let mut running = processes_of(&id);
    running.sort();
    let mut expected = pids.clone();
    expected.sort();
    assert_eq!(running, expected, "no duplicates, no orphans");
    assert_eq!(up.through_ingress("hello").0, 200);

    // Stop: nothing healthy, the ingress answers 503.
    let (st, _) = up.api(
        reqwest::Method::POST,
        &format!("/v1/apps/{id}/actions/stop"),
        None,
    );
    assert_eq!(st, 200);
    up.wait_app(&id, "stopped", 30, |a| a["status"] == "stopped");
    let t = Instant::now();
    loop {
        let (st, body) = up.through_ingress("hello");
        if st == 503 {
            assert!(body.contains("hello"), "{body}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "still routed after stop: {st}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(processes_of(&id).is_empty());
    delete_and_wait_gone(&up, &id);
    up.sigterm();
}

/// Debian's docker-registry on a free loopback port, storing in `dir`.
struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_registry(dir: &Path) -> Option<(Registry, u16)> {
    let bin = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let port = free_port();
    let cfg = dir.join("registry.yml");
    std::fs::write(
        &cfg,
        format!("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n", dir.join("store").display()),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((Registry(child), port))
}

#[test]
fn an_image_from_a_real_registry_runs_pinned_by_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((_registry, port)) = start_registry(tmp.path()) else {
        println!("SKIPPED an_image_from_a_real_registry_runs_pinned_by_digest: docker-registry is not installed (apt-get install docker-registry)");
        return;
    };
    if !Path::new("/bin/busybox").exists() {
        println!("SKIPPED an_image_from_a_real_registry_runs_pinned_by_digest: /bin/busybox is missing (apt-get install busybox-static)");
        return;
    }
    // The image: busybox, serving a page naming the instance that served it.
    let root = tmp.path().join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    let layer = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["-czf", "-", "."])
        .output()
        .unwrap()
        .stdout;
    let config = shellwego_image::ImageConfig {
        entrypoint: vec!["/bin/sh".into(), "-c".into()],
        cmd: vec!["mkdir -p /tmp/www/$SHELLWEGO_INSTANCE_ID && echo \"$SHELLWEGO_INSTANCE_ID\" > /tmp/www/$SHELLWEGO_INSTANCE_ID/index.html && exec /bin/busybox httpd -f -p $PORT -h /tmp/www/$SHELLWEGO_INSTANCE_ID".into()],
        env: vec!["GREETING=hi".into()],
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let digest = rt
        .block_on(shellwego_image::push::push_image(
            &format!("http://127.0.0.1:{port}"),
            "demo/web",
            "v1",
            &[layer],
            &config,
            None,
        ))
        .unwrap();
    let (api, ingress) = (free_port(), free_port());
    let registry = format!("127.0.0.1:{port}");
    let mut up = Up::start(
        tmp.path(),
        api,
        ingress,
        &["--insecure-registry", &registry],
    );
    let image = format!("{registry}/demo/web:v1");
    let (st, created) = up.api(
        reqwest::Method::POST,
        "/v1/apps",
        Some(json!({"name": "web", "image": image, "replicas": 2, "health_check": {"path": "/", "interval": "1s"}})),
    );
    assert_eq!(st, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let a = up.wait_app(&id, "2 healthy replicas of the image", 90, |a| {
        healthy(a, 2)
    });
    assert_eq!(
        a["image"],
        format!("{image}@{digest}"),
        "recorded by digest"
    );
    let seen: Vec<String> = (0..4)
        .map(|_| up.through_ingress("web").1.trim().to_string())
        .collect();
    assert_ne!(seen[0], seen[1]);
    assert_eq!(seen[0], seen[2]);
    let mut both = seen[..2].to_vec();
    both.sort();
    assert_eq!(both, instance_ids(&a));
    delete_and_wait_gone(&up, &id);
    up.sigterm();
}
