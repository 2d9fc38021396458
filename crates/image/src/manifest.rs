//! Manifest, index and image-configuration documents (OCI and Docker schema 2).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::{ImageConfig, ImageError, Platform};

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub(crate) const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub(crate) const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Everything we accept from `GET /v2/<repo>/manifests/<ref>`.
pub(crate) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// Manifests and configs are small; anything bigger is refused.
pub(crate) const MAX_MANIFEST_BYTES: u64 = 4 << 20;
pub(crate) const MAX_CONFIG_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformJson>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PlatformJson {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl From<&Platform> for PlatformJson {
    fn from(p: &Platform) -> Self {
        PlatformJson {
            os: p.os.clone(),
            architecture: p.architecture.clone(),
            variant: p.variant.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<u32>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
}

#[derive(Debug)]
pub(crate) enum Manifest {
    Index(Vec<Descriptor>),
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

/// The kind of layer compression, from the media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LayerKind {
    Tar,
    Gzip,
}

fn invalid(detail: impl Into<String>) -> ImageError {
    ImageError::InvalidManifest {
        detail: detail.into(),
    }
}

/// Parses a manifest or index. The kind comes from the document's
/// `mediaType`, else the response's `Content-Type`, else its shape (OCI
/// allows omitting `mediaType`).
pub(crate) fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ImageError> {
    let raw: RawManifest = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("manifest is not valid JSON: {e}")))?;
    if let Some(v) = raw.schema_version {
        if v != 2 {
            return Err(ImageError::UnsupportedMediaType {
                what: "manifest".to_owned(),
                media_type: format!("schemaVersion {v} (only schema 2 and OCI are supported)"),
            });
        }
    }
    let header_type = content_type
        .map(|c| c.split(';').next().unwrap_or_default().trim().to_owned())
        .filter(|c| !c.is_empty() && c != "application/json");
    let media_type = raw.media_type.clone().or(header_type);
    let is_index = match media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) => {
            return Err(ImageError::UnsupportedMediaType {
                what: "manifest".to_owned(),
                media_type: other.to_owned(),
            })
        }
        None => raw.manifests.is_some(),
    };
    if is_index {
        let manifests = raw
            .manifests
            .ok_or_else(|| invalid("index without \"manifests\""))?;
        for m in &manifests {
            Digest::parse(&m.digest)?;
        }
        return Ok(Manifest::Index(manifests));
    }
    let config = raw
        .config
        .ok_or_else(|| invalid("image manifest without \"config\""))?;
    let layers = raw
        .layers
        .ok_or_else(|| invalid("image manifest without \"layers\""))?;
    match config.media_type.as_str() {
        OCI_CONFIG | DOCKER_CONFIG | "" => {}
        other => {
            return Err(ImageError::UnsupportedMediaType {
                what: "image config (this artifact is not a container image)".to_owned(),
                media_type: other.to_owned(),
            })
        }
    }
    Digest::parse(&config.digest)?;
    for l in &layers {
        Digest::parse(&l.digest)?;
        layer_kind(&l.media_type)?;
    }
    Ok(Manifest::Image { config, layers })
}

pub(crate) fn layer_kind(media_type: &str) -> Result<LayerKind, ImageError> {
    match media_type {
        OCI_LAYER_TAR | "application/vnd.oci.image.layer.nondistributable.v1.tar" => {
            Ok(LayerKind::Tar)
        }
        OCI_LAYER_GZIP
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(LayerKind::Gzip),
        other => Err(ImageError::UnsupportedMediaType {
            what: "layer".to_owned(),
            media_type: other.to_owned(),
        }),
    }
}

/// Picks the entry for `want` from an index: same OS and architecture,
/// preferring the same variant (or no variant) when several match.
pub(crate) fn select_platform<'a>(
    manifests: &'a [Descriptor],
    want: &Platform,
) -> Result<&'a Descriptor, ImageError> {
    let candidates: Vec<&Descriptor> = manifests
        .iter()
        .filter(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == want.os && p.architecture == want.architecture)
        })
        .collect();
    let variant_of = |d: &Descriptor| d.platform.as_ref().and_then(|p| p.variant.clone());
    let best = candidates
        .iter()
        .find(|d| variant_of(d) == want.variant)
        .or_else(|| candidates.iter().find(|d| variant_of(d).is_none()))
        .or_else(|| candidates.first());
    match best {
        Some(d) => Ok(d),
        None => Err(ImageError::NoMatchingPlatform {
            wanted: want.to_string(),
            available: manifests
                .iter()
                .filter_map(|m| m.platform.as_ref())
                .map(|p| match &p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                })
                .collect(),
        }),
    }
}

/// The image configuration document (only what we use).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<RootFs>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

pub(crate) fn parse_config(bytes: &[u8]) -> Result<(ConfigFile, ImageConfig), ImageError> {
    let file: ConfigFile = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("image config is not valid JSON: {e}")))?;
    let c = file.config.as_ref();
    let non_empty = |s: Option<&String>| s.filter(|s| !s.is_empty()).cloned();
    let ports: BTreeSet<u16> = c
        .and_then(|c| c.exposed_ports.as_ref())
        .map(|m| {
            m.keys()
                .filter_map(|k| k.split('/').next().and_then(|p| p.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    let config = ImageConfig {
        entrypoint: c.and_then(|c| c.entrypoint.clone()).unwrap_or_default(),
        cmd: c.and_then(|c| c.cmd.clone()).unwrap_or_default(),
        env: c.and_then(|c| c.env.clone()).unwrap_or_default(),
        working_dir: non_empty(c.and_then(|c| c.working_dir.as_ref())),
        user: non_empty(c.and_then(|c| c.user.as_ref())),
        exposed_ports: ports.into_iter().collect(),
    };
    Ok((file, config))
}

/// The configuration document `push` writes for `config`.
pub(crate) fn config_document(
    config: &ImageConfig,
    platform: &Platform,
    diff_ids: Vec<String>,
) -> ConfigFile {
    let some_vec = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    ConfigFile {
        architecture: Some(platform.architecture.clone()),
        os: Some(platform.os.clone()),
        variant: platform.variant.clone(),
        config: Some(ContainerConfig {
            entrypoint: some_vec(&config.entrypoint),
            cmd: some_vec(&config.cmd),
            env: some_vec(&config.env),
            working_dir: config.working_dir.clone(),
            user: config.user.clone(),
            exposed_ports: (!config.exposed_ports.is_empty()).then(|| {
                config
                    .exposed_ports
                    .iter()
                    .map(|p| (format!("{p}/tcp"), serde_json::json!({})))
                    .collect()
            }),
        }),
        rootfs: Some(RootFs {
            kind: "layers".to_owned(),
            diff_ids,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    #[test]
    fn docker_schema2_manifest() {
        let doc = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
            "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":7,"digest":"{D1}"}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":9,"digest":"{D2}"}}]}}"#
        );
        match parse(doc.as_bytes(), Some("text/plain")).unwrap() {
            Manifest::Image { config, layers } => {
                assert_eq!(config.digest, D1);
                assert_eq!(layers.len(), 1);
                assert_eq!(layer_kind(&layers[0].media_type).unwrap(), LayerKind::Gzip);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn index_by_shape_or_header_and_platform_choice() {
        let doc = format!(
            r#"{{"schemaVersion":2,"manifests":[
            {{"mediaType":"{OCI_MANIFEST}","size":1,"digest":"{D1}","platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
            {{"mediaType":"{OCI_MANIFEST}","size":1,"digest":"{D2}","platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"{OCI_MANIFEST}","size":1,"digest":"{D3}","platform":{{"os":"unknown","architecture":"unknown"}}}}]}}"#
        );
        for ct in [None, Some(DOCKER_LIST), Some("application/json")] {
            let Manifest::Index(m) = parse(doc.as_bytes(), ct).unwrap() else {
                panic!("not an index")
            };
            let amd = Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: None,
            };
            assert_eq!(select_platform(&m, &amd).unwrap().digest, D2);
            let arm = Platform {
                os: "linux".into(),
                architecture: "arm64".into(),
                variant: Some("v8".into()),
            };
            assert_eq!(select_platform(&m, &arm).unwrap().digest, D1);
            let s390 = Platform {
                os: "linux".into(),
                architecture: "s390x".into(),
                variant: None,
            };
            match select_platform(&m, &s390) {
                Err(ImageError::NoMatchingPlatform { available, .. }) => {
                    assert!(available.contains(&"linux/amd64".to_owned()))
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn refused_documents() {
        let schema1 = br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        assert!(matches!(
            parse(schema1, None),
            Err(ImageError::UnsupportedMediaType { .. })
        ));
        let zstd = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","size":1,"digest":"{D1}"}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","size":1,"digest":"{D2}"}}]}}"#
        );
        assert!(matches!(
            parse(zstd.as_bytes(), None),
            Err(ImageError::UnsupportedMediaType { .. })
        ));
        let evil = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","size":1,"digest":"sha256:../../x"}},"layers":[]}}"#
        );
        assert!(matches!(
            parse(evil.as_bytes(), None),
            Err(ImageError::InvalidDigest { .. })
        ));
        let helm = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.cncf.helm.config.v1+json","size":1,"digest":"{D1}"}},"layers":[]}}"#
        );
        assert!(matches!(
            parse(helm.as_bytes(), None),
            Err(ImageError::UnsupportedMediaType { .. })
        ));
        assert!(matches!(
            parse(b"not json", None),
            Err(ImageError::InvalidManifest { .. })
        ));
    }

    #[test]
    fn config_round_trip() {
        let cfg = ImageConfig {
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            cmd: vec!["echo hi".into()],
            env: vec!["PATH=/bin".into(), "A=b=c".into()],
            working_dir: Some("/srv".into()),
            user: Some("1000:1000".into()),
            exposed_ports: vec![80, 443],
        };
        let doc = config_document(&cfg, &Platform::host(), vec![D1.into()]);
        let bytes = serde_json::to_vec(&doc).unwrap();
        let (file, back) = parse_config(&bytes).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(file.rootfs.unwrap().diff_ids, vec![D1.to_owned()]);

        let docker = br#"{"architecture":"amd64","os":"linux","config":{"Env":null,"Cmd":["sh"],
            "WorkingDir":"","ExposedPorts":{"53/udp":{},"80/tcp":{},"53/tcp":{}}}}"#;
        let (_, c) = parse_config(docker).unwrap();
        assert_eq!(c.cmd, vec!["sh".to_owned()]);
        assert!(c.env.is_empty());
        assert_eq!(c.working_dir, None);
        assert_eq!(c.exposed_ports, vec![53, 80]);
    }
}
