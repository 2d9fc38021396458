//! What the platform benchmarks share: real `shellwego` processes started
//! on free loopback ports in a temp dir, a small API client with the admin
//! token, the sample apps as upload archives, `/proc` readings, and
//! percentiles.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

/// A port that was free a moment ago (the usual race is acceptable here).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A `shellwego …` child process, its stderr in a log file. Killed
/// (SIGKILL) when dropped; [`Child::terminate`] stops it politely.
pub struct Child {
    name: String,
    child: tokio::process::Child,
    log: PathBuf,
}

impl Child {
    /// Start this very binary with `args` (the first names it in
    /// messages), logging at `info` to `log`.
    pub fn spawn(args: &[String], log: &Path) -> anyhow::Result<Child> {
        let exe = std::env::current_exe()?;
        let name = format!("shellwego {}", args.first().map_or("", String::as_str));
        Child::start(name, &exe, args, log)
    }

    /// Start another program, its stdout and stderr to `log`.
    pub fn spawn_program(program: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
        Child::start(program.display().to_string(), program, args, log)
    }

    fn start(name: String, program: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
        let file = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        // SHELLWEGO_BENCH_LOG: the servers' log filter, to trace a run
        // (e.g. `info,sqlx=warn,shellwego_agent=debug`).
        let filter =
            std::env::var("SHELLWEGO_BENCH_LOG").unwrap_or_else(|_| "info,sqlx=warn".into());
        let child = tokio::process::Command::new(program)
            .args(args)
            .env("SHELLWEGO_LOG", filter)
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start `{name}`"))?;
        Ok(Child {
            name,
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .id()
            .with_context(|| format!("`{}` has exited", self.name))
    }

    /// An error when the process has exited, with the end of its log.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!(
                "`{}` exited ({st}); the end of its log:\n{}",
                self.name,
                self.log_tail(30)
            );
        }
        Ok(())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, then SIGKILL when it has not exited within `grace`.
    pub async fn terminate(&mut self, grace: Duration) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// The `/v1` API as the admin.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    /// Wait (up to 30 s) until the control plane started as `child` with
    /// `data_dir` has written the admin token and answers `/readyz`.
    pub async fn wait_ready(child: &mut Child, port: u16, data_dir: &Path) -> anyhow::Result<Api> {
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let token_path = data_dir.join("admin-token");
        let t = Instant::now();
        loop {
            child.check_alive()?;
            if let Ok(token) = std::fs::read_to_string(&token_path) {
                let ready = http
                    .get(format!("{base}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ready && !token.trim().is_empty() {
                    return Ok(Api {
                        base,
                        token: token.trim().to_string(),
                        http,
                    });
                }
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!(
                    "the control plane was not ready within 30 s; the end of its log:\n{}",
                    child.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `(status, JSON body or Null)`; a 429 is waited out and retried.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        loop {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(&self.token);
            if let Some(b) = body {
                req = req.json(b);
            }
            let res = req
                .send()
                .await
                .with_context(|| format!("{method} {path}"))?;
            let status = res.status().as_u16();
            if status == 429 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let value = res.json().await.unwrap_or(Value::Null);
            return Ok((status, value));
        }
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// POST, expecting 200 or 201.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let (st, v) = self.send(reqwest::Method::POST, path, Some(body)).await?;
        if !(200..300).contains(&st) {
            bail!("POST {path} answered {st}: {v}");
        }
        Ok(v)
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        let (st, v) = self.send(reqwest::Method::DELETE, path, None).await?;
        if !(200..300).contains(&st) && st != 404 {
            bail!("DELETE {path} answered {st}: {v}");
        }
        Ok(())
    }

    /// `POST /v1/uploads`: the upload id.
    pub async fn upload(&self, archive: Vec<u8>) -> anyhow::Result<String> {
        let res = self
            .http
            .post(format!("{}/v1/uploads", self.base))
            .bearer_auth(&self.token)
            .body(archive)
            .send()
            .await?;
        let status = res.status();
        let v: Value = res.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("POST /v1/uploads answered {status}: {v}");
        }
        v["upload_id"]
            .as_str()
            .map(str::to_string)
            .context("no upload_id in the answer")
    }

    /// Wait (up to 60 s) until node `id` (any node when None) is ready and
    /// offers `driver`; its id.
    pub async fn wait_node(&self, id: Option<&str>, driver: &str) -> anyhow::Result<String> {
        let t = Instant::now();
        loop {
            let (_, nodes) = self.get("/v1/nodes").await?;
            let found = nodes["data"].as_array().and_then(|list| {
                list.iter().find(|n| {
                    id.is_none_or(|id| n["id"] == id)
                        && n["status"] == "ready"
                        && n["drivers"]
                            .as_array()
                            .is_some_and(|d| d.iter().any(|x| x == driver))
                })
            });
            if let Some(n) = found.and_then(|n| n["id"].as_str()) {
                return Ok(n.to_string());
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("no node ready with the {driver} driver within 60 s: {nodes}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `examples/hello` (a Procfile and a python3 HTTP server), compiled in so
/// the benchmark runs from an installed binary too.
pub fn write_hello(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("Procfile"),
        include_str!("../../../../examples/hello/Procfile"),
    )?;
    std::fs::write(
        dir.join("server.py"),
        include_str!("../../../../examples/hello/server.py"),
    )?;
    Ok(())
}

/// Where the host's busybox is, if it has one.
pub fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// The command a busybox root filesystem runs: its httpd on `$PORT`. Paths
/// are relative so that it works chrooted (the process driver as root),
/// in a container, and from the app directory alike.
pub fn busybox_command() -> Vec<String> {
    ["/bin/sh", "-c", "exec bin/busybox httpd -f -p $PORT -h www"]
        .map(String::from)
        .to_vec()
}

/// A root filesystem of one static busybox: `bin/busybox`, `bin/sh`, and
/// `www/index.html` for its httpd.
pub fn write_busybox_rootfs(dir: &Path) -> anyhow::Result<()> {
    let Some(bb) = busybox() else {
        bail!("busybox not found: install busybox-static");
    };
    let bin = std::fs::read(&bb)?;
    // A dynamically linked busybox would not run inside the root filesystem.
    if elf_has_interpreter(&bin) {
        bail!(
            "{} is dynamically linked: install busybox-static",
            bb.display()
        );
    }
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::create_dir_all(dir.join("tmp"))?;
    std::fs::copy(&bb, dir.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", dir.join("bin/sh"))?;
    std::fs::write(dir.join("www/index.html"), "ok\n")?;
    Ok(())
}

/// Whether a 64-bit little-endian ELF file names a dynamic loader
/// (a `PT_INTERP` program header).
fn elf_has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(size), Some(num)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    (0..usize::from(num)).any(|i| u32_at(phoff as usize + i * usize::from(size)) == Some(PT_INTERP))
}

/// `tar -czf - -C dir .`
pub fn tar_gz(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let out = std::process::Command::new("tar")
        .arg("-C")
        .arg(dir)
        .args(["-czf", "-", "."])
        .output()
        .context("cannot run tar")?;
    if !out.status.success() {
        bail!("tar failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// Memory of a process, from `/proc/<pid>/status` (KiB).
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    pub rss: u64,
    pub hwm: u64,
    pub threads: u64,
}

pub fn mem_of(pid: u32) -> anyhow::Result<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(Mem {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
        threads: field("Threads:"),
    })
}

/// Proportional set size (KiB): shared pages divided among their users.
pub fn pss_of(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// CPU time a process has used (user + system).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    cpu_time_at(Path::new(&format!("/proc/{pid}/stat")))
}

/// CPU time (user + system) from a `/proc/…/stat` file, a process's or a
/// thread's (`/proc/<pid>/task/<tid>/stat`).
pub fn cpu_time_at(stat: &Path) -> Option<Duration> {
    let stat = std::fs::read_to_string(stat).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux ABI we build for.
    Some(Duration::from_millis(ticks * 10))
}

/// The share of one core `pid` uses over `window`.
pub async fn cpu_share(pid: u32, window: Duration) -> Option<f64> {
    let a = cpu_time(pid)?;
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let b = cpu_time(pid)?;
    Some((b - a).as_secs_f64() / t.elapsed().as_secs_f64())
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// Nearest-rank percentile of sorted samples (`p` in 0..=1).
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    debug_assert!(
        (0.0..=1.0).contains(&p),
        "pct takes a fraction, not a percent: {p}"
    );
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The instances an agent has recorded in `<agent_dir>/instances/*/state.json`:
/// `(instance id, the driver's handle)`.
pub fn recorded_instances(agent_dir: &Path) -> Vec<(String, shellwego_agent::driver::Running)> {
    let Ok(entries) = std::fs::read_dir(agent_dir.join("instances")) else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path().join("state.json")).ok()?;
            let v: Value = serde_json::from_str(&text).ok()?;
            let running = serde_json::from_value(v.get("running")?.clone()).ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), running))
        })
        .collect()
}

/// Stop and clean up, through the agent's own drivers, any instance still
/// recorded under `agent_dir` (instances outlive their agent by design).
/// Returns how many there were; none after a clean run.
pub async fn reap_leftovers(agent_dir: &Path) -> usize {
    use shellwego_agent::driver::{Command, Driver};
    let left = recorded_instances(agent_dir);
    for (id, r) in &left {
        let driver: Option<Box<dyn Driver>> = match r.driver.as_str() {
            "process" => Some(Box::new(shellwego_agent::process::ProcessDriver::new())),
            "container" => shellwego_agent::container::ContainerDriver::probe()
                .ok()
                .map(|d| Box::new(d) as Box<dyn Driver>),
            _ => None,
        };
        let Some(d) = driver else { continue };
        let _ = d.run(Command::Kill(r));
        let t = Instant::now();
        while d.poll(r).is_none() && t.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = d.run(Command::Cleanup {
            instance_id: id,
            handle: Some(r),
        });
    }
    left.len()
}
