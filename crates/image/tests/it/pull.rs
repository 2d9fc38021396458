//! Push to and pull from the real registry.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use shellwego_image::push::{push_image, push_image_for_platform, push_index};
use shellwego_image::{Credentials, ImageConfig, ImageError, ImageStore, Platform, PullOptions};

use crate::registry_or_skip;
use crate::support::{
    base_layer, gzip, list, private_targets, push_busybox, tar, test_config, top_layer, E,
};

fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::new(dir.path().join("images"), &private_targets()).unwrap();
    (dir, store)
}

#[tokio::test]
async fn pull_round_trip_with_whiteouts() {
    let reg = registry_or_skip!("pull_round_trip_with_whiteouts", None);
    let digest = push_busybox(&reg.base, "test/busybox", "v1").await;
    let (_dir, store) = store();
    let reference = format!("{}/test/busybox:v1", reg.host);
    let img = store.pull(&reference, &reg.opts()).await.unwrap();

    assert_eq!(img.reference, reference);
    assert_eq!(img.manifest_digest, digest);
    assert_eq!(img.pinned, format!("{reference}@{digest}"));
    assert_eq!(img.config, test_config());
    assert_eq!(img.layers_downloaded, 2);
    assert_eq!(
        img.rootfs,
        store
            .root()
            .join("rootfs")
            .join(digest.strip_prefix("sha256:").unwrap())
    );

    let root = &img.rootfs;
    let busybox = root.join("bin/busybox");
    let meta = fs::metadata(&busybox).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    assert_eq!(meta.len(), fs::metadata("/bin/busybox").unwrap().len());
    let out = Command::new(&busybox)
        .arg("echo")
        .arg("alive")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alive\n");
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );
    // Upper layer: overwrite, whiteout, opaque directory, hard link to lower.
    assert_eq!(fs::read(root.join("etc/motd")).unwrap(), b"top\n");
    assert_eq!(
        fs::metadata(root.join("etc/motd")).unwrap().mode() & 0o777,
        0o600
    );
    assert!(!root.join("etc/removed").exists());
    assert!(!root.join("etc/.wh.removed").exists());
    assert_eq!(list(&root.join("var/cache")), ["new"]);
    assert_eq!(fs::metadata(root.join("bin/bb")).unwrap().ino(), meta.ino());
    assert!(root.join("srv").is_dir());
    // Nothing left behind.
    assert!(list(&store.root().join("tmp")).is_empty());
}

#[tokio::test]
async fn second_pull_is_a_cache_hit_and_works_offline() {
    let reg = registry_or_skip!("second_pull_is_a_cache_hit_and_works_offline", None);
    push_busybox(&reg.base, "test/cached", "latest").await;
    let (_dir, store) = store();
    let reference = format!("{}/test/cached", reg.host);
    let first = store.pull(&reference, &reg.opts()).await.unwrap();
    assert_eq!(first.layers_downloaded, 2);
    assert_eq!(first.reference, format!("{reference}:latest"));
    assert_eq!(
        first.pinned,
        format!("{reference}@{}", first.manifest_digest)
    );

    let blobs = store.root().join("blobs/sha256");
    let mtimes = |names: &[String]| -> Vec<_> {
        names
            .iter()
            .map(|n| fs::metadata(blobs.join(n)).unwrap().modified().unwrap())
            .collect()
    };
    let names = list(&blobs);
    assert_eq!(names.len(), 4, "manifest, config, two layers: {names:?}");
    let before = mtimes(&names);

    let second = store.pull(&reference, &reg.opts()).await.unwrap();
    assert_eq!(second.layers_downloaded, 0);
    assert_eq!(second.rootfs, first.rootfs);
    assert_eq!(second.config, first.config);
    assert_eq!(list(&blobs), names);
    assert_eq!(mtimes(&names), before, "no blob was written again");

    // Registry gone: the pinned reference still resolves from the cache...
    drop(reg);
    let offline = store
        .pull(&first.pinned, &PullOptions::default())
        .await
        .unwrap();
    assert_eq!(offline.manifest_digest, first.manifest_digest);
    assert_eq!(offline.layers_downloaded, 0);
    assert_eq!(offline.rootfs, first.rootfs);
    assert_eq!(offline.pinned, first.pinned);
    // ...while a tag needs the registry.
    assert!(matches!(
        store.pull(&reference, &PullOptions::default()).await,
        Err(ImageError::Connect { .. })
    ));
}

#[tokio::test]
async fn layers_are_counted_through_a_proxy_on_cache_hits() {
    let reg = registry_or_skip!("layers_are_counted_through_a_proxy_on_cache_hits", None);
    push_busybox(&reg.base, "test/counted", "v1").await;
    let proxy = crate::support::bearer_proxy(&reg.base, "u", "p").await;
    let (_dir, store) = store();
    let opts = PullOptions {
        insecure_registries: vec![proxy.host.clone()],
        auth: Some(Credentials {
            username: "u".into(),
            password: "p".into(),
        }),
        ..PullOptions::default()
    };
    let reference = format!("{}/test/counted:v1", proxy.host);
    let img = store.pull(&reference, &opts).await.unwrap();
    assert_eq!(img.layers_downloaded, 2);
    // Config and two layers.
    assert_eq!(proxy.blob_requests.load(Ordering::SeqCst), 3);
    assert_eq!(
        proxy.token_requests.load(Ordering::SeqCst),
        1,
        "token reused"
    );
    assert_eq!(
        *proxy.last_scope.lock().unwrap(),
        "repository:test/counted:pull"
    );
    let again = store.pull(&reference, &opts).await.unwrap();
    assert_eq!(again.layers_downloaded, 0);
    assert_eq!(
        proxy.blob_requests.load(Ordering::SeqCst),
        3,
        "no blob fetched"
    );
    // And by digest: no request at all.
    let tokens = proxy.token_requests.load(Ordering::SeqCst);
    store.pull(&img.pinned, &opts).await.unwrap();
    assert_eq!(proxy.token_requests.load(Ordering::SeqCst), tokens);
}

#[tokio::test]
async fn bearer_token_flow_needs_the_right_credentials() {
    let reg = registry_or_skip!("bearer_token_flow_needs_the_right_credentials", None);
    push_busybox(&reg.base, "test/bearer", "v1").await;
    let proxy = crate::support::bearer_proxy(&reg.base, "alice", "s3cret").await;
    let reference = format!("{}/test/bearer:v1", proxy.host);
    let mut opts = PullOptions {
        insecure_registries: vec![proxy.host.clone()],
        ..PullOptions::default()
    };
    let (_dir, store) = store();
    // Anonymous: the token service refuses.
    match store.pull(&reference, &opts).await {
        Err(ImageError::Unauthorized { registry, detail }) => {
            assert_eq!(registry, proxy.host);
            assert!(detail.contains("token service"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    opts.auth = Some(Credentials {
        username: "alice".into(),
        password: "wrong".into(),
    });
    assert!(matches!(
        store.pull(&reference, &opts).await,
        Err(ImageError::Unauthorized { .. })
    ));
    opts.auth = Some(Credentials {
        username: "alice".into(),
        password: "s3cret".into(),
    });
    let img = store.pull(&reference, &opts).await.unwrap();
    assert!(img.rootfs.join("bin/busybox").is_file());
}

#[tokio::test]
async fn tampered_layer_fails_digest_check_and_leaves_nothing() {
    let reg = registry_or_skip!("tampered_layer_fails_digest_check_and_leaves_nothing", None);
    let layer = gzip(&base_layer());
    let layer_digest = format!("sha256:{}", sha256_hex(&layer));
    push_image(
        &reg.base,
        "test/tampered",
        "v1",
        &[layer],
        &test_config(),
        None,
    )
    .await
    .unwrap();
    let data = reg.blob_data(&layer_digest);
    let mut bytes = fs::read(&data).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&data, &bytes).unwrap();

    let (_dir, store) = store();
    let reference = format!("{}/test/tampered:v1", reg.host);
    match store.pull(&reference, &reg.opts()).await {
        Err(ImageError::DigestMismatch { what, expected, .. }) => {
            assert_eq!(expected, layer_digest);
            assert!(what.contains("layer"), "{what}");
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(list(&store.root().join("rootfs")).is_empty(), "no rootfs");
    assert!(list(&store.root().join("tmp")).is_empty(), "no temp files");
    let hex = layer_digest.strip_prefix("sha256:").unwrap();
    assert!(!store.root().join("blobs/sha256").join(hex).exists());
}

#[tokio::test]
async fn tampered_manifest_is_refused() {
    let reg = registry_or_skip!("tampered_manifest_is_refused", None);
    let digest = push_busybox(&reg.base, "test/badmanifest", "v1").await;
    let proxy = crate::support::bearer_proxy(&reg.base, "u", "p").await;
    proxy.tamper_manifests.store(true, Ordering::SeqCst);
    let opts = PullOptions {
        insecure_registries: vec![proxy.host.clone()],
        auth: Some(Credentials {
            username: "u".into(),
            password: "p".into(),
        }),
        ..PullOptions::default()
    };
    let (_dir, store) = store();
    // By tag: the body no longer matches Docker-Content-Digest.
    match store
        .pull(&format!("{}/test/badmanifest:v1", proxy.host), &opts)
        .await
    {
        Err(ImageError::DigestMismatch { what, expected, .. }) => {
            assert_eq!(expected, digest);
            assert!(what.contains("Docker-Content-Digest"), "{what}");
        }
        other => panic!("{other:?}"),
    }
    // By digest: the body does not match the digest asked for.
    match store
        .pull(&format!("{}/test/badmanifest@{digest}", proxy.host), &opts)
        .await
    {
        Err(ImageError::DigestMismatch { expected, .. }) => assert_eq!(expected, digest),
        other => panic!("{other:?}"),
    }
    assert!(list(&store.root().join("blobs/sha256")).is_empty());
    assert!(list(&store.root().join("rootfs")).is_empty());
    // Untampered, the same pulls work.
    proxy.tamper_manifests.store(false, Ordering::SeqCst);
    store
        .pull(&format!("{}/test/badmanifest@{digest}", proxy.host), &opts)
        .await
        .unwrap();
}

#[tokio::test]
async fn corrupted_cache_is_detected() {
    let reg = registry_or_skip!("corrupted_cache_is_detected", None);
    let digest = push_busybox(&reg.base, "test/corrupt", "v1").await;
    let (_dir, store) = store();
    let reference = format!("{}/test/corrupt:v1", reg.host);
    store.pull(&reference, &reg.opts()).await.unwrap();
    // Drop the rootfs and damage a cached layer: the rebuild notices.
    let hex = digest.strip_prefix("sha256:").unwrap();
    fs::remove_dir_all(store.root().join("rootfs").join(hex)).unwrap();
    let layer_digest = format!("sha256:{}", sha256_hex(&top_layer()));
    let cached = store
        .root()
        .join("blobs/sha256")
        .join(layer_digest.strip_prefix("sha256:").unwrap());
    let mut bytes = fs::read(&cached).unwrap();
    bytes[0] ^= 1;
    fs::write(&cached, &bytes).unwrap();
    assert!(matches!(
        store.pull(&reference, &reg.opts()).await,
        Err(ImageError::DigestMismatch { .. })
    ));
    assert!(!cached.exists(), "the bad blob is dropped");
    assert!(list(&store.root().join("rootfs")).is_empty());
    // And the next pull fetches it again.
    let img = store.pull(&reference, &reg.opts()).await.unwrap();
    assert_eq!(img.layers_downloaded, 1);
}

#[tokio::test]
async fn pull_by_digest_checks_the_manifest() {
    let reg = registry_or_skip!("pull_by_digest_checks_the_manifest", None);
    let digest = push_busybox(&reg.base, "test/bydigest", "v1").await;
    let (_dir, store) = store();
    let img = store
        .pull(&format!("{}/test/bydigest@{digest}", reg.host), &reg.opts())
        .await
        .unwrap();
    assert_eq!(img.manifest_digest, digest);
    assert_eq!(
        img.reference,
        format!("{}/test/bydigest@{digest}", reg.host)
    );
    assert_eq!(img.pinned, format!("{}/test/bydigest@{digest}", reg.host));
    // Tag and digest: the pinned form drops the digest given and adds ours.
    let img = store
        .pull(
            &format!("{}/test/bydigest:v1@{digest}", reg.host),
            &reg.opts(),
        )
        .await
        .unwrap();
    assert_eq!(
        img.pinned,
        format!("{}/test/bydigest:v1@{digest}", reg.host)
    );
    // A digest the registry does not have.
    let missing = format!("sha256:{}", "0".repeat(64));
    assert!(matches!(
        store
            .pull(
                &format!("{}/test/bydigest@{missing}", reg.host),
                &reg.opts()
            )
            .await,
        Err(ImageError::NotFound { .. })
    ));
}

#[tokio::test]
async fn basic_auth_registry() {
    let reg = registry_or_skip!("basic_auth_registry", Some(("bob", "hunter2")));
    let creds = Credentials {
        username: "bob".into(),
        password: "hunter2".into(),
    };
    // Pushing needs the credentials too.
    assert!(matches!(
        push_image(
            &reg.base,
            "test/private",
            "v1",
            &[top_layer()],
            &ImageConfig::default(),
            None
        )
        .await,
        Err(ImageError::Unauthorized { .. })
    ));
    let layers = [gzip(&base_layer())];
    let digest = push_image(
        &reg.base,
        "test/private",
        "v1",
        &layers,
        &test_config(),
        Some(&creds),
    )
    .await
    .unwrap();

    let (_dir, store) = store();
    let reference = format!("{}/test/private:v1", reg.host);
    match store.pull(&reference, &reg.opts()).await {
        Err(ImageError::Unauthorized { detail, .. }) => {
            assert!(detail.contains("none were given"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
    let wrong = PullOptions {
        auth: Some(Credentials {
            username: "bob".into(),
            password: "nope".into(),
        }),
        ..reg.opts()
    };
    assert!(matches!(
        store.pull(&reference, &wrong).await,
        Err(ImageError::Unauthorized { .. })
    ));
    let right = PullOptions {
        auth: Some(creds),
        ..reg.opts()
    };
    let img = store.pull(&reference, &right).await.unwrap();
    assert_eq!(img.manifest_digest, digest);
    assert!(img.rootfs.join("bin/busybox").is_file());
}

#[tokio::test]
async fn plain_http_registry_is_refused_unless_insecure() {
    let reg = registry_or_skip!("plain_http_registry_is_refused_unless_insecure", None);
    push_busybox(&reg.base, "test/plain", "v1").await;
    let (_dir, store) = store();
    let err = store
        .pull(
            &format!("{}/test/plain:v1", reg.host),
            &PullOptions::default(),
        )
        .await
        .unwrap_err();
    match &err {
        ImageError::Connect {
            registry, https, ..
        } => {
            assert_eq!(registry, &reg.host);
            assert!(https);
        }
        other => panic!("{other:?}"),
    }
    let message = err.to_string();
    eprintln!("plain HTTP refused: {message}");
    assert!(message.contains("insecure_registries"), "{message}");
    assert!(message.contains("HTTPS"), "{message}");
    assert!(list(&store.root().join("blobs/sha256")).is_empty());
}

#[tokio::test]
async fn index_selects_the_host_platform() {
    let reg = registry_or_skip!("index_selects_the_host_platform", None);
    let host = Platform::host();
    let other = Platform {
        os: "linux".into(),
        architecture: if host.architecture == "s390x" {
            "riscv64"
        } else {
            "s390x"
        }
        .into(),
        variant: None,
    };
    let marker = |arch: &str| {
        tar(&[
            E::Dir("etc/", 0o755),
            E::File("etc/arch", arch.as_bytes(), 0o644),
        ])
    };
    let mut manifests = Vec::new();
    for p in [&other, &host] {
        let digest = push_image_for_platform(
            &reg.base,
            "test/multi",
            &format!("only-{}", p.architecture),
            &[marker(&p.architecture)],
            &ImageConfig {
                cmd: vec![p.architecture.clone()],
                ..ImageConfig::default()
            },
            p,
            None,
        )
        .await
        .unwrap();
        manifests.push((digest, p.clone()));
    }
    let index_digest = push_index(&reg.base, "test/multi", "v1", &manifests, None)
        .await
        .unwrap();

    let (_dir, store) = store();
    let img = store
        .pull(&format!("{}/test/multi:v1", reg.host), &reg.opts())
        .await
        .unwrap();
    assert_eq!(img.manifest_digest, manifests[1].0, "the host's manifest");
    assert_ne!(img.manifest_digest, index_digest);
    assert_eq!(img.config.cmd, vec![host.architecture.clone()]);
    assert_eq!(
        fs::read_to_string(img.rootfs.join("etc/arch")).unwrap(),
        host.architecture
    );
    // By the index digest, the same choice.
    let by_index = store
        .pull(
            &format!("{}/test/multi@{index_digest}", reg.host),
            &reg.opts(),
        )
        .await
        .unwrap();
    assert_eq!(by_index.manifest_digest, manifests[1].0);
    assert_eq!(by_index.layers_downloaded, 0);

    // An index without the host's platform.
    push_index(&reg.base, "test/multi", "foreign", &manifests[..1], None)
        .await
        .unwrap();
    match store
        .pull(&format!("{}/test/multi:foreign", reg.host), &reg.opts())
        .await
    {
        Err(ImageError::NoMatchingPlatform { wanted, available }) => {
            assert_eq!(wanted, host.to_string());
            assert_eq!(available, vec![format!("linux/{}", other.architecture)]);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn concurrent_pulls_share_one_rootfs() {
    let reg = registry_or_skip!("concurrent_pulls_share_one_rootfs", None);
    push_busybox(&reg.base, "test/concurrent", "v1").await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    let store = ImageStore::new(&root, &private_targets()).unwrap();
    // A second store on the same directory: no shared lock, only renames.
    let other = ImageStore::new(&root, &private_targets()).unwrap();
    let reference = Arc::new(format!("{}/test/concurrent:v1", reg.host));
    let opts = Arc::new(reg.opts());
    let mut tasks = Vec::new();
    for i in 0..6 {
        let s = if i % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        let (r, o) = (Arc::clone(&reference), Arc::clone(&opts));
        tasks.push(tokio::spawn(async move { s.pull(&r, &o).await }));
    }
    let mut rootfs = None;
    let mut downloads_by_first_store = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        let img = t.await.unwrap().unwrap();
        if i % 2 == 0 {
            downloads_by_first_store += img.layers_downloaded;
        }
        assert!(img.rootfs.join("bin/busybox").is_file());
        assert_eq!(rootfs.get_or_insert(img.rootfs.clone()), &img.rootfs);
    }
    assert!(
        downloads_by_first_store <= 2,
        "one store downloads each layer once"
    );
    let rootfs = rootfs.unwrap();
    assert_eq!(list(&rootfs.join("var/cache")), ["new"]);
    assert_eq!(list(&root.join("rootfs")).len(), 1);
    assert!(list(&root.join("tmp")).is_empty());
}

#[tokio::test]
async fn gc_removes_what_is_not_kept() {
    let reg = registry_or_skip!("gc_removes_what_is_not_kept", None);
    let a = push_busybox(&reg.base, "test/gc-a", "v1").await;
    // Shares the busybox layer with A, and has its own upper layer.
    let b = push_image(
        &reg.base,
        "test/gc-b",
        "v1",
        &[gzip(&base_layer()), tar(&[E::File("b-only", b"b", 0o644)])],
        &ImageConfig::default(),
        None,
    )
    .await
    .unwrap();
    let (_dir, store) = store();
    let img_a = store
        .pull(&format!("{}/test/gc-a:v1", reg.host), &reg.opts())
        .await
        .unwrap();
    let img_b = store
        .pull(&format!("{}/test/gc-b:v1", reg.host), &reg.opts())
        .await
        .unwrap();
    assert_eq!(img_b.layers_downloaded, 1, "the shared layer is cached");
    let blobs = store.root().join("blobs/sha256");
    // 2 manifests, 2 configs, shared layer, A's top, B's top.
    assert_eq!(list(&blobs).len(), 7);

    let keep = [a];
    let freed = store.gc(&keep).unwrap();
    assert!(freed > 0);
    assert!(img_a.rootfs.join("bin/busybox").is_file());
    assert!(!img_b.rootfs.exists());
    assert_eq!(list(&blobs).len(), 4, "A's manifest, config and layers");
    assert_eq!(store.gc(&keep).unwrap(), 0, "nothing more to free");

    // Invalid digests are refused, not ignored.
    assert!(matches!(
        store.gc(&["sha256:nope".to_owned()]),
        Err(ImageError::InvalidDigest { .. })
    ));

    let freed = store.gc(&[]).unwrap();
    assert!(freed > fs::metadata("/bin/busybox").unwrap().len());
    assert!(list(&blobs).is_empty());
    assert!(list(&store.root().join("rootfs")).is_empty());
    assert!(list(&store.root().join("tmp")).is_empty());

    // And everything comes back.
    let again = store
        .pull(&format!("{}/test/gc-b@{b}", reg.host), &reg.opts())
        .await
        .unwrap();
    assert_eq!(again.layers_downloaded, 2);
}

#[tokio::test]
async fn blob_size_limit() {
    let reg = registry_or_skip!("blob_size_limit", None);
    push_busybox(&reg.base, "test/limits", "v1").await;
    let (_dir, store) = store();
    let opts = PullOptions {
        max_blob_bytes: 100_000,
        ..reg.opts()
    };
    assert!(matches!(
        store
            .pull(&format!("{}/test/limits:v1", reg.host), &opts)
            .await,
        Err(ImageError::TooLarge { limit: 100_000, .. })
    ));
    let opts = PullOptions {
        max_rootfs_bytes: 100_000,
        ..reg.opts()
    };
    assert!(matches!(
        store
            .pull(&format!("{}/test/limits:v1", reg.host), &opts)
            .await,
        Err(ImageError::LimitExceeded { what: "bytes", .. })
    ));
    assert!(list(&store.root().join("rootfs")).is_empty());
    assert!(list(&store.root().join("tmp")).is_empty());
}

#[tokio::test]
async fn missing_image_and_bad_reference() {
    let reg = registry_or_skip!("missing_image_and_bad_reference", None);
    let (_dir, store) = store();
    assert!(matches!(
        store
            .pull(&format!("{}/test/nothing:v1", reg.host), &reg.opts())
            .await,
        Err(ImageError::NotFound { .. })
    ));
    assert!(matches!(
        store.pull("Not A Reference", &reg.opts()).await,
        Err(ImageError::InvalidReference { .. })
    ));
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
