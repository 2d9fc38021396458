//! Object storage in S3 (`--storage-url s3://…`), against a real S3 server:
//! moto in server mode (`SHELLWEGO_TEST_MOTO`, the path of its
//! `moto_server`, which .ci/run installs; skipped without it).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use shellwego_testkit::platform::free_port;
use shellwego_testkit::server::TestServer;
use shellwego_testkit::Backend;

/// A moto S3 server on a loopback port, stopped when dropped.
struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn moto() -> Option<Moto> {
    let Ok(bin) = std::env::var("SHELLWEGO_TEST_MOTO") else {
        eprintln!("SKIPPED: set SHELLWEGO_TEST_MOTO to a moto_server (pip install 'moto[server]') to run the S3 tests");
        return None;
    };
    let port = free_port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server starts");
    let moto = Moto { child, port };
    let t = Instant::now();
    while reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .is_err()
    {
        assert!(t.elapsed() < Duration::from_secs(30), "moto did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some(moto)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_go_to_s3_when_the_storage_url_says_so() {
    let Some(moto) = moto().await else { return };
    let s3 = format!("http://127.0.0.1:{}", moto.port);
    let http = reqwest::Client::new();
    assert!(http
        .put(format!("{s3}/shellwego"))
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
    let url = format!(
        "s3://shellwego/objects?endpoint={s3}&region=us-east-1&allow_http=true&access_key_id=test&secret_access_key=test"
    );
    let s = TestServer::start_with(Backend::Sqlite, |c| c.storage_url = Some(url))
        .await
        .unwrap();
    let archive: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let r = s
        .http
        .post(s.url("/v1/uploads"))
        .bearer_auth(&s.token)
        .body(archive.clone())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    let id = body["upload_id"].as_str().unwrap().to_string();
    // In the bucket, under the prefix; not on the server's disk.
    let stored = http
        .get(format!("{s3}/shellwego/objects/uploads/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 200);
    assert!(stored.bytes().await.unwrap()[..] == archive[..]);
    assert!(!s.cfg.data_dir.join("uploads").join(&id).exists());
    // A node of the organization downloads it through the control plane.
    let agent = s.fake_agent("n1", 4, 8 << 30).await;
    let got = s
        .http
        .get(s.url(&format!("/v1/agent/uploads/{id}")))
        .bearer_auth(&agent.credential)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert!(got.bytes().await.unwrap()[..] == archive[..]);
    let missing = s
        .http
        .get(s.url("/v1/agent/uploads/upl_missing"))
        .bearer_auth(&agent.credential)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn a_bad_storage_url_stops_the_start_with_the_reason() {
    for (url, says) in [
        ("s3:///objects", "names no bucket"),
        ("s3://b?colour=blue", "'colour' is not a setting"),
        ("ftp://x/y", "is not a storage URL"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg =
            shellwego_server::serve::ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path());
        cfg.storage_url = Some(url.into());
        let err = match shellwego_server::serve::start(cfg).await {
            Ok(started) => {
                started.shutdown().await.unwrap();
                panic!("{url} was accepted")
            }
            Err(e) => e,
        };
        let msg = format!("{err:#}");
        assert!(
            msg.contains(says) && msg.contains("storage_url"),
            "{url}: {msg}"
        );
    }
}
