//! Pushing images to an OCI distribution registry: enough to build test
//! images (and simple ones for real) without docker.
//!
//! Each blob goes up with a monolithic upload (`POST /v2/<repo>/blobs/uploads/`
//! then `PUT <location>?digest=…`), skipped when the registry already has it
//! (`HEAD`); then the OCI image manifest (or index) is `PUT` under the tag.
//! Auth works as for pulls (basic, or bearer tokens with `pull,push` scope).

use reqwest::Url;
use serde_json::json;

use crate::digest::{Digest, HashingReader};
use crate::manifest::{
    self, Descriptor, PlatformJson, OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_LAYER_TAR,
    OCI_MANIFEST,
};
use crate::registry::RegistryClient;
use crate::{Credentials, ImageConfig, ImageError, Platform, Reference};

/// Pushes an image for the host platform. `layers` are tar or tar+gzip
/// archives (detected by their first bytes), lowest first;
/// `registry_base_url` is like `http://127.0.0.1:5000`. Returns the
/// manifest digest (`sha256:…`).
pub async fn push_image(
    registry_base_url: &str,
    repo: &str,
    tag: &str,
    layers: &[Vec<u8>],
    config: &ImageConfig,
    auth: Option<&Credentials>,
) -> Result<String, ImageError> {
    push_image_for_platform(
        registry_base_url,
        repo,
        tag,
        layers,
        config,
        &Platform::host(),
        auth,
    )
    .await
}

/// [`push_image`] with the platform recorded in the image configuration.
pub async fn push_image_for_platform(
    registry_base_url: &str,
    repo: &str,
    tag: &str,
    layers: &[Vec<u8>],
    config: &ImageConfig,
    platform: &Platform,
    auth: Option<&Credentials>,
) -> Result<String, ImageError> {
    let client = client(registry_base_url, repo, tag, auth)?;
    let mut layer_descriptors = Vec::with_capacity(layers.len());
    let mut diff_ids = Vec::with_capacity(layers.len());
    for layer in layers {
        let gzip = layer.starts_with(&[0x1f, 0x8b]);
        let diff_id = if gzip {
            HashingReader::new(flate2::read::MultiGzDecoder::new(layer.as_slice()))
                .finish()
                .map_err(|e| ImageError::InvalidArchive {
                    detail: format!("layer is not valid gzip: {e}"),
                })?
                .0
        } else {
            Digest::of(layer)
        };
        let descriptor = upload(
            &client,
            layer,
            if gzip { OCI_LAYER_GZIP } else { OCI_LAYER_TAR },
        )
        .await?;
        layer_descriptors.push(descriptor);
        diff_ids.push(diff_id.to_string());
    }
    let config_doc = manifest::config_document(config, platform, diff_ids);
    let config_bytes = to_json(&config_doc)?;
    let config_descriptor = upload(&client, &config_bytes, OCI_CONFIG).await?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_descriptor,
        "layers": layer_descriptors,
    });
    put(&client, tag, OCI_MANIFEST, &to_json(&manifest)?).await
}

/// Pushes an OCI index under `tag` listing manifests already in the
/// repository (by digest) with their platforms. Returns the index digest.
pub async fn push_index(
    registry_base_url: &str,
    repo: &str,
    tag: &str,
    manifests: &[(String, Platform)],
    auth: Option<&Credentials>,
) -> Result<String, ImageError> {
    let client = client(registry_base_url, repo, tag, auth)?;
    let mut entries = Vec::with_capacity(manifests.len());
    for (digest, platform) in manifests {
        let expected = Digest::parse(digest)?;
        let fetched = client.get_manifest(digest).await?;
        let actual = Digest::of(&fetched.bytes);
        if actual != expected {
            return Err(ImageError::DigestMismatch {
                what: format!("manifest {digest}"),
                expected: digest.clone(),
                actual: actual.to_string(),
            });
        }
        let media_type = fetched
            .content_type
            .as_deref()
            .and_then(|c| c.split(';').next())
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .unwrap_or(OCI_MANIFEST)
            .to_owned();
        entries.push(Descriptor {
            media_type,
            digest: digest.clone(),
            size: fetched.bytes.len() as u64,
            platform: Some(PlatformJson::from(platform)),
        });
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": entries,
    });
    put(&client, tag, OCI_INDEX, &to_json(&index)?).await
}

fn client(
    registry_base_url: &str,
    repo: &str,
    tag: &str,
    auth: Option<&Credentials>,
) -> Result<RegistryClient, ImageError> {
    let bad = |reason: String| ImageError::InvalidReference {
        reference: format!("{registry_base_url} {repo}:{tag}"),
        reason,
    };
    let mut base = Url::parse(registry_base_url).map_err(|e| bad(format!("bad base URL: {e}")))?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(bad("the base URL must be http or https".to_owned()));
    }
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    let host = match (base.host_str(), base.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => return Err(bad("the base URL has no host".to_owned())),
    };
    // Validates the repository and tag with the reference rules.
    let r = Reference::parse(&format!("{host}/{repo}:{tag}"))?;
    Ok(RegistryClient::new(
        reqwest::Client::new(),
        base,
        host,
        r.repository,
        auth.cloned(),
        "pull,push",
    ))
}

async fn upload(
    client: &RegistryClient,
    bytes: &[u8],
    media_type: &str,
) -> Result<Descriptor, ImageError> {
    let digest = Digest::of(bytes);
    if !client.blob_exists(&digest).await? {
        client.upload_blob(&digest, bytes).await?;
    }
    Ok(Descriptor {
        media_type: media_type.to_owned(),
        digest: digest.to_string(),
        size: bytes.len() as u64,
        platform: None,
    })
}

async fn put(
    client: &RegistryClient,
    tag: &str,
    media_type: &str,
    bytes: &[u8],
) -> Result<String, ImageError> {
    let digest = Digest::of(bytes).to_string();
    if let Some(theirs) = client.put_manifest(tag, media_type, bytes).await? {
        if theirs != digest {
            return Err(ImageError::DigestMismatch {
                what: format!("manifest pushed to {} as {tag}", client.registry()),
                expected: digest,
                actual: theirs,
            });
        }
    }
    Ok(digest)
}

fn to_json(value: &impl serde::Serialize) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(value).map_err(|e| ImageError::InvalidManifest {
        detail: format!("cannot serialise: {e}"),
    })
}
