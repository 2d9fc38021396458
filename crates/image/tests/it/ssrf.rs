//! The SSRF guard in pulls: a registry on a refused address is never
//! contacted, and a registry on an allowed address cannot send the puller
//! to a refused one. (No docker-registry needed: the servers here redirect
//! or only count connections.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use shellwego_image::{ImageError, ImageStore, PullOptions};
use shellwego_net::ssrf::{Guard, Reason, SsrfConfig, SsrfError};

/// A listener on `ip` that accepts and counts connections, and says nothing.
async fn counting(ip: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (addr, n)
}

fn insecure(hosts: &[String]) -> PullOptions {
    PullOptions {
        insecure_registries: hosts.to_vec(),
        ..Default::default()
    }
}

fn assert_refused(e: ImageError, want: Reason) {
    match e {
        ImageError::Refused {
            reason: SsrfError::Refused { reason, .. },
            ..
        } => assert_eq!(reason, want),
        other => panic!("not refused by the guard: {other:?} ({other})"),
    }
}

#[tokio::test]
async fn a_registry_on_a_refused_address_is_not_contacted() {
    let (addr, connections) = counting("127.0.0.1").await;
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::new(dir.path().join("images"), &Guard::strict()).unwrap();
    for registry in [addr.to_string(), format!("localhost:{}", addr.port())] {
        let e = store
            .pull(
                &format!("{registry}/team/app:v1"),
                &insecure(std::slice::from_ref(&registry)),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("[ssrf]"), "{e}");
        assert_refused(e, Reason::Loopback);
    }
    assert_eq!(connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_allowed_registry_cannot_redirect_to_a_refused_address() {
    let (secret, connections) = counting("127.0.0.1").await;
    // The "registry" the operator allowed: every request is redirected to
    // the loopback address (as registries redirect blobs to storage).
    let target = format!("http://{secret}/latest/meta-data");
    let app = axum::Router::new().fallback(move || {
        let target = target.clone();
        async move {
            (
                axum::http::StatusCode::TEMPORARY_REDIRECT,
                [(axum::http::header::LOCATION, target)],
            )
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let registry = l.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move { axum::serve(l, app).await });
    let guard = Guard::new(&SsrfConfig {
        allow: vec!["127.0.0.2/32".parse().unwrap()],
        allow_private_targets: false,
    });
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::new(dir.path().join("images"), &guard).unwrap();
    let e = store
        .pull(
            &format!("{registry}/team/app:v1"),
            &insecure(std::slice::from_ref(&registry)),
        )
        .await
        .unwrap_err();
    assert_refused(e, Reason::Loopback);
    assert_eq!(connections.load(Ordering::SeqCst), 0);
    server.abort();
}
