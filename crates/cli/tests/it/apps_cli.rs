//! `shellwego apps …` and `shellwego nodes …` of the real binary against a
//! real `shellwego up` (control plane, local agent with the process driver,
//! ingress) on free ports with its own data dir; the CLI gets the API URL
//! and the admin token through SHELLWEGO_API_URL and SHELLWEGO_TOKEN, and
//! HOME/XDG_CONFIG_HOME in a temp dir. Its harness ([`Platform`]) serves
//! `deploy_cli` too.

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_shellwego");
const HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/hello");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `shellwego up --runtime process` in a temp dir, its local node ready.
pub(crate) struct Platform {
    child: Option<Child>,
    pub(crate) dir: tempfile::TempDir,
    api: u16,
    ingress: u16,
    token: String,
    http: reqwest::blocking::Client,
}

impl Platform {
    pub(crate) fn start() -> Platform {
        Platform::start_with(&[])
    }

    /// With more arguments for `up`.
    pub(crate) fn start_with(extra: &[&str]) -> Platform {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        let (api, ingress) = (free_port(), free_port());
        let child = Command::new(BIN)
            .arg("up")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", &format!("127.0.0.1:{api}")])
            .args(["--ingress-listen", &format!("127.0.0.1:{ingress}")])
            .args(["--runtime", "process"])
            .args(extra)
            .env("SHELLWEGO_LOG", "info,sqlx=warn")
            .env_remove("SHELLWEGO_CONFIG")
            .env_remove("SHELLWEGO_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("up.log")).unwrap())
            .spawn()
            .unwrap();
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut p = Platform {
            child: Some(child),
            dir,
            api,
            ingress,
            token: String::new(),
            http,
        };
        let tok_path = p.dir.path().join("data/admin-token");
        p.until(30, "up to start and its local node to be ready", |p| {
            let Ok(t) = std::fs::read_to_string(&tok_path) else {
                return false;
            };
            p.token = t.trim().to_string();
            !p.token.is_empty()
                && p.api_get("/v1/nodes").is_some_and(|n| {
                    n["data"]
                        .as_array()
                        .is_some_and(|d| d.iter().any(|n| n["status"] == "ready"))
                })
        });
        p
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default()
    }

    fn until(&mut self, secs: u64, what: &str, mut ok: impl FnMut(&mut Platform) -> bool) {
        let t = Instant::now();
        while !ok(self) {
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "timed out waiting for {what}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn api_get(&self, path: &str) -> Option<Value> {
        let r = self
            .http
            .get(format!("http://127.0.0.1:{}{path}", self.api))
            .bearer_auth(&self.token)
            .send()
            .ok()?;
        r.status().is_success().then(|| r.json().ok()).flatten()
    }

    /// The ingress's port.
    pub(crate) fn ingress_port(&self) -> u16 {
        self.ingress
    }

    /// GET / through the ingress as `<app>.localhost`.
    fn through_ingress(&self, app: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("http://127.0.0.1:{}/", self.ingress))
            .header("Host", format!("{app}.localhost"))
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    }

    /// The ingress answers `status` for `app` (its routes follow the store
    /// within a second).
    fn ingress_answers(&mut self, app: &str, status: u16) -> String {
        let mut last = (0, String::new());
        self.until(10, &format!("{app} to answer {status}"), |p| {
            last = p.through_ingress(app);
            last.0 == status
        });
        last.1
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// The CLI as the bootstrap admin, through the environment, with a
    /// temp home and an empty stdin.
    pub(crate) fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("HOME", self.home())
            .env("XDG_CONFIG_HOME", self.dir.path().join("xdg"))
            .env(
                "SHELLWEGO_API_URL",
                format!("http://127.0.0.1:{}", self.api),
            )
            .env("SHELLWEGO_TOKEN", &self.token)
            .stdin(Stdio::null());
        c
    }

    pub(crate) fn ok(&self, args: &[&str]) -> Out {
        let o = run(&mut self.cli(args));
        assert!(
            o.ok,
            "{args:?} failed ({:?}):\nstdout: {}\nstderr: {}\n{}",
            o.code,
            o.stdout,
            o.stderr,
            self.log()
        );
        o
    }

    pub(crate) fn fails(&self, args: &[&str]) -> Out {
        let o = run(&mut self.cli(args));
        assert!(!o.ok, "{args:?} should have failed:\n{}", o.stdout);
        o
    }

    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = self.ok(&a).stdout;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
    }
}

impl Drop for Platform {
    /// Instances outlive `up` (the next one re-adopts them): delete every
    /// app and wait for its processes to go before stopping `up`.
    fn drop(&mut self) {
        let ids: Vec<String> = self
            .api_get("/v1/apps?limit=100")
            .and_then(|l| {
                l["data"].as_array().map(|d| {
                    d.iter()
                        .filter_map(|a| a["id"].as_str().map(str::to_string))
                        .collect()
                })
            })
            .unwrap_or_default();
        for id in &ids {
            let _ = self
                .http
                .delete(format!("http://127.0.0.1:{}/v1/apps/{id}", self.api))
                .bearer_auth(&self.token)
                .send();
        }
        // Every instance, of these apps or of ones deleted earlier, runs
        // in the agent's data dir.
        let data = self.dir.path().join("data");
        let t = Instant::now();
        while !processes_in(&data).is_empty() && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// Processes working in `dir` (instances run in the agent's data dir).
fn processes_in(dir: &Path) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .collect()
}

/// Processes whose environment says they are an instance of `app_id`.
fn processes_of(app_id: &str) -> Vec<u32> {
    let needle = format!("SHELLWEGO_APP_ID={app_id}");
    pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .collect()
}

pub(crate) struct Out {
    pub(crate) ok: bool,
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

pub(crate) fn run(c: &mut Command) -> Out {
    let o = c.output().unwrap();
    Out {
        ok: o.status.success(),
        code: o.status.code(),
        stdout: String::from_utf8(o.stdout).unwrap(),
        stderr: String::from_utf8(o.stderr).unwrap(),
    }
}

/// The value of `KEY  value` in a fields table.
pub(crate) fn field(table: &str, key: &str) -> String {
    table
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .filter(|rest| rest.starts_with("  "))
                .map(|rest| rest.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {key} in:\n{table}"))
}

/// The row of a table whose first column is `first`, split on runs of
/// two or more spaces.
pub(crate) fn row(table: &str, first: &str) -> Vec<String> {
    table
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .find(|cells| cells.first().is_some_and(|c| c == first))
        .unwrap_or_else(|| panic!("no row {first} in:\n{table}"))
}

pub(crate) fn hello_tarball(dir: &Path) -> PathBuf {
    let archive = dir.join("hello.tgz");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(HELLO)
        .arg("-czf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap()
        .success());
    archive
}

#[test]
fn apps_create_list_get_scale_stop_start_restart_delete_through_the_cli() {
    let mut p = Platform::start();
    let archive = hello_tarball(p.dir.path());
    let archive = archive.to_str().unwrap();

    // Create from an uploaded tarball and wait: healthy on return.
    let o = p.ok(&[
        "apps",
        "create",
        "hello",
        "--upload",
        archive,
        "--replicas",
        "2",
        "--health-path",
        "/health",
        "--env",
        "GREETING=hi",
        "--tag",
        "demo",
        "--wait",
    ]);
    let id = field(&o.stdout, "ID");
    assert!(id.starts_with("app_"), "{}", o.stdout);
    assert_eq!(field(&o.stdout, "NAME"), "hello");
    assert!(o.stderr.contains("Uploaded "), "{}", o.stderr);
    // Not a terminal: plain progress lines, the last one the settled state.
    assert!(
        o.stderr.lines().last() == Some("hello: 2/2 healthy (running)"),
        "{}",
        o.stderr
    );
    assert!(!o.stderr.contains('\r'), "{}", o.stderr);
    let body = p.ingress_answers("hello", 200);
    let served: Value = serde_json::from_str(&body).unwrap();
    assert!(served["instance"].as_str().unwrap().starts_with("inst_"));

    // list: table and JSON, and its filters.
    let list = p.ok(&["apps", "list"]).stdout;
    let r = row(&list, "hello");
    assert_eq!(r[1], "running", "{list}");
    assert_eq!(r[2], "2/2", "{list}");
    assert!(r[3].starts_with("tarball upl_"), "{list}");
    assert_eq!(r[4], id, "{list}");
    assert_eq!(
        p.json(&["apps", "list"])["data"][0]["id"],
        id.as_str(),
        "JSON is the API's body"
    );
    assert!(p
        .ok(&["apps", "list", "--tag", "demo", "--status", "running"])
        .stdout
        .contains(&id));
    assert!(p
        .ok(&["apps", "list", "-q", "hel", "--all"])
        .stdout
        .contains(&id));
    assert!(!p
        .ok(&["apps", "list", "--status", "stopped"])
        .stdout
        .contains(&id));

    // get, by name and by id.
    let a = p.json(&["apps", "get", "hello"]);
    assert_eq!(a["id"], id.as_str());
    assert_eq!(a["replicas"]["healthy"], 2, "{a:#}");
    let insts = a["instances"].as_array().unwrap();
    assert_eq!(insts.len(), 2, "{a:#}");
    assert!(insts.iter().all(|i| i["status"] == "healthy"), "{a:#}");
    assert_eq!(a["env"]["GREETING"]["value"], "hi");
    assert_eq!(a["health_check"]["path"], "/health");
    let t = p.ok(&["apps", "get", &id]).stdout;
    assert_eq!(field(&t, "NAME"), "hello");
    assert_eq!(field(&t, "STATUS"), "running");
    assert!(
        t.contains("ID  ") && t.contains("NODE") && t.contains("STARTED"),
        "{t}"
    );
    for i in insts {
        let r = row(&t, i["id"].as_str().unwrap());
        assert!(r[1].starts_with("node_"), "{t}");
        assert_eq!(r[2], "healthy", "{t}");
    }

    // scale down, waiting.
    let o = p.ok(&["apps", "scale", "hello", "1", "--wait"]);
    assert!(
        o.stdout.contains("Scaled hello to 1 replica."),
        "{}",
        o.stdout
    );
    let a = p.json(&["apps", "get", "hello"]);
    assert_eq!(a["replicas"]["desired"], 1, "{a:#}");
    assert_eq!(a["replicas"]["healthy"], 1, "{a:#}");
    assert_eq!(a["status"], "running");

    // stop: stopped on return, and the ingress has nothing to send to.
    let o = p.ok(&["apps", "stop", "hello", "--wait"]);
    assert!(
        o.stderr.lines().last() == Some("hello: 0/0 healthy (stopped)"),
        "{}",
        o.stderr
    );
    assert_eq!(p.json(&["apps", "get", "hello"])["status"], "stopped");
    p.ingress_answers("hello", 503);

    // start and restart with -o json --wait: the app once settled.
    let a = p.json(&["apps", "start", &id, "--wait"]);
    assert_eq!(a["status"], "running", "{a:#}");
    assert_eq!(a["replicas"]["healthy"], 1, "{a:#}");
    let before = a["instances"][0]["id"].as_str().unwrap().to_string();
    let a = p.json(&[
        "apps",
        "restart",
        "hello",
        "--strategy",
        "rolling",
        "--batch-size",
        "1",
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert_eq!(a["status"], "running", "{a:#}");
    let running: Vec<&Value> = a["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status"] == "healthy")
        .collect();
    assert_eq!(running.len(), 1, "{a:#}");
    assert_ne!(running[0]["id"], before.as_str(), "a new instance: {a:#}");
    p.ingress_answers("hello", 200);

    // Names that do not exist, and mistakes in flags.
    let o = p.fails(&["apps", "get", "nope"]);
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("no app named 'nope'"), "{}", o.stderr);
    let o = p.fails(&["apps", "scale", "nope", "2"]);
    assert!(o.stderr.contains("no app named 'nope'"), "{}", o.stderr);
    let o = p.fails(&["apps", "get", "app_doesnotexist"]);
    assert!(o.stderr.contains("not found"), "{}", o.stderr);
    let o = p.fails(&["apps", "create", "x", "--image", "nginx", "--env", "FOO"]);
    assert_eq!(o.code, Some(2), "a usage error");
    assert!(o.stderr.contains("--env"), "{}", o.stderr);
    let o = p.fails(&["apps", "create", "x"]);
    assert!(o.stderr.contains("--image"), "{}", o.stderr);
    // The API's field errors come through.
    let o = p.fails(&["apps", "create", "Bad_Name", "--image", "nginx"]);
    assert!(
        o.stderr.contains("name: must be a DNS label"),
        "{}",
        o.stderr
    );

    // delete: refused without --yes when nothing can be asked, then done.
    let o = p.fails(&["apps", "delete", "hello"]);
    assert!(o.stderr.contains("--yes"), "{}", o.stderr);
    assert_eq!(p.json(&["apps", "get", "hello"])["id"], id.as_str());
    let o = p.ok(&["apps", "delete", "hello", "--yes"]);
    assert!(
        o.stdout.contains(&format!("Deleted app hello ({id})")),
        "{}",
        o.stdout
    );
    assert_eq!(p.json(&["apps", "list"])["data"], serde_json::json!([]));
    p.fails(&["apps", "get", "hello"]);
    p.ingress_answers("hello", 404);
    p.until(30, "the deleted app's processes to exit", |_| {
        processes_of(&id).is_empty()
    });
}

#[test]
fn apps_create_wait_fails_with_the_reason_when_the_app_crash_loops() {
    let p = Platform::start();
    let archive = hello_tarball(p.dir.path());
    let o = p.fails(&[
        "apps",
        "create",
        "crashy",
        "--upload",
        archive.to_str().unwrap(),
        "--command",
        "python3 -c 'import sys; sys.exit(3)'",
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert_eq!(o.code, Some(1));
    // The app was created; the wait says why it is not running.
    assert!(field(&o.stdout, "ID").starts_with("app_"), "{}", o.stdout);
    assert!(o.stderr.contains("crash-looping"), "{}", o.stderr);
    assert!(o.stderr.contains("exited with code 3"), "{}", o.stderr);
    assert!(o.stderr.contains("latest events:"), "{}", o.stderr);
    assert!(o.stderr.contains("app.crashed"), "{}", o.stderr);

    // A timeout is a failure too, saying where the app got to.
    let o = p.fails(&[
        "apps",
        "create",
        "sleepy",
        "--upload",
        archive.to_str().unwrap(),
        "--command",
        "sleep 600",
        "--wait",
        "--timeout",
        "2s",
    ]);
    assert!(
        o.stderr.contains("gave up waiting for sleepy after 2s"),
        "{}",
        o.stderr
    );
}

#[test]
fn nodes_list_get_register_drain_delete_through_the_cli() {
    let mut p = Platform::start();
    let api = format!("http://127.0.0.1:{}", p.api);

    // The local node of `up`.
    let l = p.json(&["nodes", "list"]);
    let nodes = l["data"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{l:#}");
    let local = nodes[0]["id"].as_str().unwrap().to_string();
    let host = nodes[0]["hostname"].as_str().unwrap().to_string();
    let t = p.ok(&["nodes", "list"]).stdout;
    let r = row(&t, &local);
    assert_eq!(r[2], "ready", "{t}");
    assert!(t.contains("process"), "driver column: {t}");
    let g = p.ok(&["nodes", "get", &local]).stdout;
    assert_eq!(field(&g, "ID"), local);
    assert_eq!(field(&g, "STATUS"), "ready");
    assert_eq!(field(&g, "DRIVERS"), "process");
    if !host.is_empty() {
        assert_eq!(p.json(&["nodes", "get", &host])["id"], local.as_str());
    }

    // Register a machine: a join token and the command to run there.
    let o = p.ok(&[
        "nodes", "register", "--name", "n2", "--region", "fra1", "--zone", "fra1-a", "--label",
        "gpu=true",
    ]);
    let n2 = field(&o.stdout, "ID");
    let token = field(&o.stdout, "JOIN TOKEN");
    assert!(n2.starts_with("node_"), "{}", o.stdout);
    assert!(token.starts_with("sw_join_"), "{}", o.stdout);
    assert!(
        o.stdout.contains(&format!(
            "shellwego agent --control-plane {api} --join-token {token} --data-dir /var/lib/shellwego-agent"
        )),
        "{}",
        o.stdout
    );
    let j = p.json(&["nodes", "register", "--name", "n3"]);
    assert!(j["join_token"].as_str().unwrap().starts_with("sw_join_"));
    let n3 = j["id"].as_str().unwrap().to_string();
    let g = p.json(&["nodes", "get", "n2"]);
    assert_eq!(g["id"], n2.as_str());
    assert_eq!(g["region"], "fra1");
    assert_eq!(g["zone"], "fra1-a");
    assert_eq!(g["labels"]["gpu"], "true");
    assert_eq!(
        p.json(&["nodes", "list", "--region", "fra1"])["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let o = p.fails(&["nodes", "get", "nope"]);
    assert!(o.stderr.contains("no node named 'nope'"), "{}", o.stderr);

    // Delete: refused without --yes, then gone.
    let o = p.fails(&["nodes", "delete", "n2"]);
    assert!(o.stderr.contains("--yes"), "{}", o.stderr);
    let o = p.ok(&["nodes", "delete", "n2", "--yes"]);
    assert!(
        o.stdout.contains(&format!("Deleted node n2 ({n2})")),
        "{}",
        o.stdout
    );
    p.ok(&["nodes", "delete", &n3, "--yes", "--migrate-apps"]);
    assert_eq!(
        p.json(&["nodes", "list"])["data"].as_array().unwrap().len(),
        1
    );

    // Drain the only node with an app on it: nowhere to move to, so after
    // the drain's timeout its instance is stopped and the app is pending.
    let archive = hello_tarball(p.dir.path());
    let o = p.ok(&[
        "apps",
        "create",
        "hello",
        "--upload",
        archive.to_str().unwrap(),
        "--wait",
    ]);
    let app = field(&o.stdout, "ID");
    assert_eq!(processes_of(&app).len(), 1);
    let o = p.ok(&["nodes", "drain", &local, "--timeout", "2s", "--wait"]);
    assert!(o.stdout.contains("1 instance to move"), "{}", o.stdout);
    assert!(
        o.stderr
            .lines()
            .last()
            .is_some_and(|l| l.ends_with(": drained")),
        "{}",
        o.stderr
    );
    println!("drain progress:\n{}", o.stderr);
    // Drained means nothing runs there any more.
    assert_eq!(processes_of(&app), Vec::<u32>::new(), "{}", o.stderr);
    assert_eq!(p.json(&["nodes", "get", &local])["status"], "draining");
    p.until(10, "hello to be pending", |p| {
        p.api_get("/v1/apps?filter[name]=hello")
            .is_some_and(|l| l["data"][0]["status"] == "pending")
    });
}

#[test]
fn every_apps_and_nodes_command_has_help() {
    for args in [
        vec!["apps"],
        vec!["apps", "create"],
        vec!["apps", "list"],
        vec!["apps", "get"],
        vec!["apps", "delete"],
        vec!["apps", "scale"],
        vec!["apps", "start"],
        vec!["apps", "stop"],
        vec!["apps", "restart"],
        vec!["nodes"],
        vec!["nodes", "list"],
        vec!["nodes", "get"],
        vec!["nodes", "register"],
        vec!["nodes", "drain"],
        vec!["nodes", "delete"],
    ] {
        let mut a = args.clone();
        a.push("--help");
        let o = run(Command::new(BIN).args(&a));
        assert!(o.ok, "{args:?}: {}", o.stderr);
        assert!(o.stdout.contains("Usage:"), "{args:?}: {}", o.stdout);
        for flag in ["--output", "--api-url", "--token"] {
            assert!(o.stdout.contains(flag), "{args:?} --help lacks {flag}");
        }
    }
    let o = run(Command::new(BIN).args(["apps", "create", "--help"]));
    for flag in [
        "--image",
        "--upload",
        "--source-url",
        "--memory",
        "--cpu",
        "--replicas",
        "--port",
        "--env",
        "--health-path",
        "--runtime",
        "--region",
        "--label",
        "--tag",
        "--command",
        "--wait",
        "--timeout",
    ] {
        assert!(o.stdout.contains(flag), "apps create --help lacks {flag}");
    }
}
