//! The API crate's vocabulary and stored spec against core's typed model:
//! the lists here must name exactly the model's words, and the spec this
//! crate writes into the store today must read back unchanged through
//! `shellwego_core::model::AppSpec` (which will own the stored form).

use std::collections::BTreeMap;

use shellwego_api::apps::{
    AppSpec, HealthCheck, Placement, ScaleConstraints, Source, VolumeSpec, RUNTIMES, STATUSES,
};
use shellwego_api::deployments::{STAGES, STRATEGIES};
use shellwego_core::model::{self, AppStatus, DriverKind, Stage, Strategy};

#[test]
fn the_api_lists_are_the_model_names() {
    assert_eq!(STATUSES, AppStatus::NAMES);
    assert_eq!(RUNTIMES, DriverKind::NAMES);
    assert_eq!(STAGES, Stage::NAMES);
    let deploy: Vec<&str> = Strategy::DEPLOY.iter().map(|s| s.as_str()).collect();
    assert_eq!(STRATEGIES, deploy.as_slice());
}

fn full_spec() -> AppSpec {
    AppSpec {
        image: Some("registry:5000/app@sha256:abc".into()),
        command: Some(vec!["./server".into(), "--port".into(), "8080".into()]),
        env: BTreeMap::from([("A".into(), "1".into()), ("B".into(), "two".into())]),
        domains: vec!["api.example.com".into()],
        volumes: vec![
            VolumeSpec {
                mount_path: "/data".into(),
                size: Some("5gb".into()),
                kind: Some("persistent".into()),
            },
            VolumeSpec {
                mount_path: "/cache".into(),
                size: None,
                kind: None,
            },
        ],
        health_check: HealthCheck {
            path: Some("/health".into()),
            port: Some(8080),
            interval: Some("30s".into()),
            timeout: Some("2s".into()),
            retries: Some(4),
            grace_period: Some("1m".into()),
        },
        source: Some(Source {
            kind: model::SourceKind::Tarball,
            url: None,
            upload_id: Some("upl_0123456789abcdefghij".into()),
            git: None,
        }),
        runtime: Some(DriverKind::Container),
        placement: Placement {
            region: Some("eu-west".into()),
            labels: BTreeMap::from([("gpu".into(), "true".into())]),
        },
        stop_timeout: Some("20s".into()),
        autoscale: Some(ScaleConstraints {
            min: 1,
            max: 5,
            cpu_threshold: Some(80),
            scale_out_cooldown: Some("30s".into()),
            scale_in_cooldown: None,
        }),
        rollout_batch: Some(2),
        networking: shellwego_api::apps::NetworkingPolicy {
            public: false,
            allowed_egress: vec!["10.99.0.0/24".into(), "fd00::/8".into()],
        },
        logging: Some(shellwego_api::apps::Logging {
            retention: Some("3d".into()),
            max_size: Some("16mb".into()),
        }),
    }
}

#[test]
fn the_stored_spec_reads_back_through_the_model() {
    for today in [AppSpec::default(), full_spec()] {
        // What `spec_json` stores today.
        let stored = serde_json::to_string(&today).unwrap();
        let m: model::AppSpec = serde_json::from_str(&stored).unwrap();
        assert_eq!(m.version, 1);
        // What the model writes: today's document plus `"version": 1`…
        let written = serde_json::to_value(&m).unwrap();
        let mut expected = serde_json::to_value(&today).unwrap();
        expected
            .as_object_mut()
            .unwrap()
            .insert("version".into(), 1.into());
        assert_eq!(written, expected);
        // …which today's reader still reads as the same spec.
        let back: AppSpec = serde_json::from_value(written).unwrap();
        assert_eq!(back, today);
    }
}
