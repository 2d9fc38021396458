//! `shellwego bench apps`: create-to-healthy latency, per runtime driver,
//! on a real `shellwego up` (this binary) in a temp dir.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::kit::{self, Api, Platform};

/// How often the app is read while waiting for it to be healthy. The wait
/// adds POLL/2 on average; polling much faster than this takes enough CPU
/// from the node's two cores to slow what is measured (answered → started
/// of python3 apps doubled at 2 ms).
const POLL: Duration = Duration::from_millis(5);
/// CPU each app reserves: the smallest the API allows.
const CPU_MILLIS: i64 = 100;

pub async fn run(apps: usize, runtime: Option<String>, app: Option<String>) -> anyhow::Result<()> {
    if apps == 0 {
        bail!("--apps must be at least 1");
    }
    let drivers = match runtime {
        Some(r) => vec![r],
        None => vec!["process".to_string(), "container".to_string()],
    };
    for driver in drivers {
        if driver == "container" {
            if let Err(why) = shellwego_agent::container::ContainerDriver::probe() {
                println!("apps, container driver: skipped: the container driver does not work on this host ({why}); install runc and run as root");
                continue;
            }
        }
        if driver == "microvm" {
            if let Err(why) = shellwego_agent::microvm::MicrovmDriver::probe() {
                println!("apps, microvm driver: skipped: the microvm driver does not work on this host ({why}); install qemu-system-x86 and linux-image-cloud-amd64");
                continue;
            }
        }
        let app = app.clone().unwrap_or_else(|| {
            if driver == "process" {
                "hello"
            } else {
                "busybox"
            }
            .to_string()
        });
        bench_driver(&driver, &app, apps).await?;
    }
    Ok(())
}

struct Sample {
    /// POST /v1/apps answered → GET shows replicas.healthy == 1.
    healthy: Duration,
    /// POST answered → the instance's `started_at` (as the agent reported).
    started: Option<Duration>,
    /// The POST itself.
    post: Duration,
}

async fn bench_driver(driver: &str, app: &str, n: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut up = kit::up(dir.path(), &["--runtime", driver])?
        .start_async()
        .await?;
    let res = measure(&mut up, dir.path(), driver, app, n).await;
    up.terminate_async(Duration::from_secs(15)).await;
    let left = kit::reap_leftovers(&up.agent_dir()).await;
    if left > 0 {
        eprintln!("note: {left} instance(s) were left running; stopped them");
    }
    if res.is_err() {
        eprintln!("the end of `shellwego up`'s log:\n{}", up.log_tail(40));
    }
    res
}

async fn measure(
    up: &mut Platform,
    tmp: &Path,
    driver: &str,
    app: &str,
    n: usize,
) -> anyhow::Result<()> {
    let api = up.api();
    let node = api.wait_node(None, driver).await?;
    let (_, node) = api.get(&format!("/v1/nodes/{node}")).await?;
    let cores = node["capacity"]["cpu_cores"].as_i64().unwrap_or(1);
    let fit = cores * 1000 / CPU_MILLIS;

    let src = tmp.join("app");
    let (what, command, health) = match app {
        "hello" => {
            kit::write_hello(&src)?;
            (
                "examples/hello (python3, from its Procfile)",
                None,
                "/health",
            )
        }
        _ => {
            kit::write_busybox_rootfs(&src)?;
            (
                "a root filesystem of one static busybox, running its httpd",
                Some(kit::busybox_command()),
                "/",
            )
        }
    };
    let upload = api.upload(kit::tar_gz(&src)?).await?;
    let body = |name: String| {
        let mut b = json!({
            "name": name,
            "replicas": 1,
            "runtime": driver,
            "resources": {"memory": "64m", "cpu": format!("{:.1}", CPU_MILLIS as f64 / 1000.0)},
            "source": {"type": "tarball", "upload_id": upload},
            "health_check": {"path": health, "interval": "1s"},
            "stop_timeout": "2s",
        });
        if let Some(c) = &command {
            b["command"] = json!(c);
        }
        b
    };
    let agent_dir = up.agent_dir();

    // The first app also fetches the archive into the agent's cache.
    let warm = one(&api, &agent_dir, body("bench-warmup".into())).await?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        up.check_alive()?;
        samples.push(
            one(&api, &agent_dir, body(format!("bench-{i}")))
                .await
                .with_context(|| format!("app {} of {n}", i + 1))?,
        );
    }

    let sorted = |f: &dyn Fn(&Sample) -> Option<Duration>| {
        let mut v: Vec<Duration> = samples.iter().filter_map(f).collect();
        v.sort();
        v
    };
    let healthy = sorted(&|s| Some(s.healthy));
    let started = sorted(&|s| s.started);
    let booted = sorted(&|s| s.started.map(|t| s.healthy.saturating_sub(t)));
    let post = sorted(&|s| Some(s.post));
    let line = |v: &[Duration]| {
        format!(
            "p50 {}  p90 {}  p99 {}  max {}",
            kit::ms(kit::pct(v, 0.5)),
            kit::ms(kit::pct(v, 0.9)),
            kit::ms(kit::pct(v, 0.99)),
            kit::ms(kit::pct(v, 1.0))
        )
    };
    println!(
        "apps, {driver} driver: {n} apps created one after another, each 1 replica of {what} \
         (uploaded once as a tarball), 64m, 0.1 CPU, health check GET {health} (interval 1s)."
    );
    println!(
        "  Each app is deleted, and its instance gone, before the next is created: this node \
         reports {cores} cores, which fit {fit} instances at 0.1 CPU{}.",
        if (fit as usize) < n {
            ", fewer than the apps"
        } else {
            " (deleting keeps every sample on an otherwise idle node)"
        }
    );
    println!(
        "  A warm-up app (it fetches the archive into the agent's cache) is not counted: {}.",
        kit::ms(warm.healthy)
    );
    println!(
        "  POST /v1/apps answered → GET shows replicas.healthy == 1 (polled every {} ms): {}",
        POLL.as_millis(),
        line(&healthy)
    );
    println!(
        "    of which answered → instance started (placement, agent sync, unpack, driver start; started_at has ms precision): {}",
        line(&started)
    );
    println!(
        "    of which instance started → healthy seen (app boot, health check, report): {}",
        line(&booted)
    );
    let slow: Vec<String> = started
        .iter()
        .filter(|d| **d > Duration::from_millis(500))
        .map(|d| kit::ms(*d))
        .collect();
    if !slow.is_empty() {
        println!(
            "    {} of {n} instances started more than 500 ms after the answer: {}",
            slow.len(),
            slow.join(", ")
        );
    }
    println!("  the POST /v1/apps itself: {}", line(&post));
    Ok(())
}

/// Create one app, wait until healthy, delete it and wait until its
/// instance is gone from the agent.
async fn one(api: &Api, agent_dir: &Path, body: Value) -> anyhow::Result<Sample> {
    let t_post = Instant::now();
    let created = api.post("/v1/apps", &body).await?;
    let t0 = Instant::now();
    let wall0 = SystemTime::now();
    let id = created["id"]
        .as_str()
        .context("no id in the created app")?
        .to_string();
    let app = loop {
        let (st, a) = api.get(&format!("/v1/apps/{id}")).await?;
        if st == 200 && a["replicas"]["healthy"] == 1 {
            break a;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("app {id} was not healthy within 120 s: {a}");
        }
        tokio::time::sleep(POLL).await;
    };
    let healthy = t0.elapsed();
    let inst = &app["instances"][0];
    let started = inst["started_at"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(SystemTime::from)
        .map(|t| t.duration_since(wall0).unwrap_or_default());
    let inst_id = inst["id"].as_str().unwrap_or_default().to_string();
    api.delete(&format!("/v1/apps/{id}")).await?;
    let t = Instant::now();
    while !inst_id.is_empty() && agent_dir.join("instances").join(&inst_id).exists() {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("instance {inst_id} of the deleted app {id} was still there after 60 s");
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(Sample {
        healthy,
        started,
        post: t0 - t_post,
    })
}
