//! `shellwego bench events`: what the event recorder and the SSE fan-out
//! sustain. An in-process server (SQLite in a temp dir, or a scratch
//! PostgreSQL database); N subscribers on `GET /v1/events/stream`;
//! producers commit events, one per transaction, through the server's own
//! unit of work (what every state change does), each stamped with the time
//! its commit began. Prints events committed per second, what every
//! subscriber received, and the latency from the commit to each
//! subscriber's read of it (p50/p99/max).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use shellwego_store::events::{Actor, NewEvent};

use super::kit::{ms, pct};

pub struct Opts {
    pub subscribers: usize,
    pub seconds: u64,
    pub producers: usize,
    /// Events per second in all (0: as fast as they commit).
    pub rate: u64,
    pub postgres_url: Option<String>,
}

/// What one subscriber saw: latencies of bench events, overflow ends.
#[derive(Default)]
struct Seen {
    lat: Vec<Duration>,
    overflows: u64,
}

pub async fn run(o: Opts) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = shellwego_server::ServerConfig::new(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        dir.path(),
    );
    config.admin_password = Some("bench-password".into());
    let pg = match &o.postgres_url {
        Some(u) => {
            let db = shellwego_testkit::db::PgDb::empty(u, "swbench").await?;
            config.database_url = Some(db.url().to_string());
            Some(db)
        }
        None => None,
    };
    let backend = if pg.is_some() { "postgres" } else { "sqlite" };
    let server = shellwego_server::serve::start(config.clone()).await?;
    let base = format!("http://{}", server.addr);
    let token = std::fs::read_to_string(config.admin_token_path())?;
    let org: String = {
        let me: serde_json::Value = reqwest::Client::new()
            .get(format!("{base}/v1/user"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        me["organizations"][0]["id"]
            .as_str()
            .context("no organization")?
            .to_string()
    };
    let epoch = Instant::now();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(o.subscribers)
        .build()?;
    // Subscribers: each its own stream, bench events only.
    let ready = Arc::new(AtomicU64::new(0));
    let mut subs = vec![];
    for _ in 0..o.subscribers {
        let (client, base, token, ready) =
            (client.clone(), base.clone(), token.clone(), ready.clone());
        let max = o.seconds + 15;
        subs.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            let r = client
                .get(format!(
                    "{base}/v1/events/stream?filter[type]=app.updated&max_seconds={max}"
                ))
                .bearer_auth(&token)
                .send()
                .await;
            let Ok(r) = r else { return seen };
            ready.fetch_add(1, Ordering::Relaxed);
            let mut body = r.bytes_stream();
            let mut buf = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let frame: String = buf.drain(..end + 2).collect();
                    if frame.contains("event: stream.overflow") {
                        seen.overflows += 1;
                    }
                    let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) else {
                        continue;
                    };
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                        continue;
                    };
                    if v["metadata"]["done"] == true {
                        return seen;
                    }
                    if let Some(t) = v["metadata"]["t_us"].as_u64() {
                        let now = epoch.elapsed();
                        seen.lat.push(now.saturating_sub(Duration::from_micros(t)));
                    }
                }
            }
            seen
        }));
    }
    let t0 = Instant::now();
    while ready.load(Ordering::Relaxed) < o.subscribers as u64 {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "subscribers did not connect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The streams are open once their headers came; give their tails a
    // moment to be registered.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let ctx = server.ctx.clone();
    let committed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let per_producer =
        (o.rate > 0).then(|| Duration::from_secs_f64(o.producers as f64 / o.rate as f64));
    let started = Instant::now();
    let mut producers = vec![];
    for _ in 0..o.producers {
        let (ctx, org, committed, stop) =
            (ctx.clone(), org.clone(), committed.clone(), stop.clone());
        producers.push(tokio::spawn(async move {
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(every) = per_producer {
                    tokio::time::sleep_until(next.into()).await;
                    next += every;
                }
                let mut u = ctx.unit().await?;
                let t = epoch.elapsed().as_micros() as u64;
                u.record(
                    NewEvent::info("app.updated", &Actor::system(), "app", "app_bench")
                        .in_org(&org)
                        .meta(serde_json::json!({"t_us": t})),
                );
                u.commit().await?;
                committed.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(o.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await??;
    }
    let produced_for = started.elapsed();
    let n = committed.load(Ordering::Relaxed);
    // The end marker, then every subscriber drains to it.
    let mut u = ctx.unit().await?;
    u.record(
        NewEvent::info("app.updated", &Actor::system(), "app", "app_bench")
            .in_org(&org)
            .meta(serde_json::json!({"done": true})),
    );
    u.commit().await?;
    let mut all = vec![];
    let mut received = vec![];
    let mut overflows = 0;
    for s in subs {
        let seen = tokio::time::timeout(Duration::from_secs(o.seconds + 20), s)
            .await
            .context("a subscriber did not finish")??;
        received.push(seen.lat.len() as u64);
        overflows += seen.overflows;
        all.extend(seen.lat);
    }
    let drained = started.elapsed();
    all.sort();
    let min_rx = received.iter().copied().min().unwrap_or(0);
    let total_rx: u64 = received.iter().sum();
    println!(
        "events: {backend}, {} subscribers, {} producers, {}",
        o.subscribers,
        o.producers,
        if o.rate > 0 {
            format!("{} events/s offered", o.rate)
        } else {
            "as fast as they commit".to_string()
        }
    );
    println!(
        "  committed: {n} events in {:.1} s = {:.0} events/s",
        produced_for.as_secs_f64(),
        n as f64 / produced_for.as_secs_f64()
    );
    println!(
        "  delivered: every subscriber {} of {n} (min), {total_rx} SSE messages in {:.1} s = {:.0} messages/s; overflow ends: {overflows}",
        min_rx,
        drained.as_secs_f64(),
        total_rx as f64 / drained.as_secs_f64()
    );
    println!(
        "  commit -> SSE read: p50 {}, p99 {}, max {}",
        ms(pct(&all, 0.50)),
        ms(pct(&all, 0.99)),
        ms(all.last().copied().unwrap_or_default())
    );
    server.shutdown().await?;
    if let Some(db) = pg {
        db.drop_now().await?;
    }
    Ok(())
}
