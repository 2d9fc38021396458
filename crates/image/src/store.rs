//! The on-disk image cache and the pull flow.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use reqwest::Url;
use shellwego_net::ssrf::Guard;

use crate::digest::{Digest, HashingReader};
use crate::manifest::{self, Manifest, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES};
use crate::registry::RegistryClient;
use crate::unpack::{remove_tree, Unpacker};
use crate::{Credentials, ImageConfig, ImageError, Platform, Reference, UnpackOptions};

/// Temporary entries older than this, left by a crash, are removed by `gc`.
const STALE_TMP: Duration = Duration::from_secs(24 * 3600);

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Registries (`host:port`, as written in references) spoken to over
    /// plain HTTP. Every other registry is HTTPS only.
    pub insecure_registries: Vec<String>,
    /// Basic credentials, used for basic auth and to obtain bearer tokens.
    pub auth: Option<Credentials>,
    /// Largest blob (compressed layer) accepted.
    pub max_blob_bytes: u64,
    /// Largest unpacked image (file content, all layers together).
    pub max_rootfs_bytes: u64,
    /// Most archive entries in an image (all layers together).
    pub max_rootfs_entries: u64,
}

impl Default for PullOptions {
    /// HTTPS only, anonymous, 8 GiB per blob, 32 GiB and 2 million entries
    /// per root filesystem.
    fn default() -> Self {
        PullOptions {
            insecure_registries: Vec::new(),
            auth: None,
            max_blob_bytes: 8 << 30,
            max_rootfs_bytes: 32 << 30,
            max_rootfs_entries: 2_000_000,
        }
    }
}

/// A pulled, verified, unpacked image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// The reference normalised: `registry/repository:tag` (and
    /// `@sha256:…` when one was given).
    pub reference: String,
    /// The reference as given, without any digest, plus
    /// `@<manifest_digest>`: `nginx:alpine@sha256:…`. Pulling it again gives
    /// exactly this image (offline, once cached).
    pub pinned: String,
    /// `sha256:…` of the image manifest we unpacked, computed by us. For a
    /// multi-platform image this is the host platform's manifest, not the
    /// index.
    pub manifest_digest: String,
    pub config: ImageConfig,
    /// The unpacked root filesystem, shared by every user of this digest:
    /// treat it as read-only.
    pub rootfs: PathBuf,
    /// Layers fetched from the registry by this pull (0 on a cache hit).
    pub layers_downloaded: usize,
}

#[derive(Default)]
struct Shared {
    /// One lock per manifest digest being pulled.
    locks: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Blob and rootfs hex digests in use by pulls in progress (`gc` spares
    /// them), with a use count.
    pins: Mutex<HashMap<String, usize>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An image cache rooted at a directory (`<agent-data>/images`):
/// `blobs/sha256/<hex>`, `rootfs/<manifest-hex>/`, `tmp/`. Cheap to clone;
/// clones share their locks.
#[derive(Clone)]
pub struct ImageStore {
    root: PathBuf,
    /// Made by `guard`: every address it reaches is one the guard allows.
    http: reqwest::Client,
    guard: Guard,
    shared: Arc<Shared>,
}

impl fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl ImageStore {
    /// Opens (creating its directories) the store at `root`. Several stores
    /// (even in several processes) may share a root. Registries are
    /// contacted only on addresses `guard` allows (its policy may change
    /// later: [`Guard::set`]).
    pub fn new(root: impl Into<PathBuf>, guard: &Guard) -> io::Result<Self> {
        let root = root.into();
        for dir in ["blobs/sha256", "rootfs", "tmp"] {
            fs::create_dir_all(root.join(dir))?;
        }
        // Absolute, so that rootfs paths handed out are usable anywhere.
        let root = root.canonicalize()?;
        let http = guard
            .client(
                reqwest::Client::builder()
                    .user_agent(concat!("shellwego-image/", env!("CARGO_PKG_VERSION")))
                    .connect_timeout(Duration::from_secs(30))
                    .read_timeout(Duration::from_secs(120)),
            )
            .map_err(io::Error::other)?;
        Ok(ImageStore {
            root,
            http,
            guard: guard.clone(),
            shared: Arc::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    fn rootfs_path(&self, d: &Digest) -> PathBuf {
        self.root.join("rootfs").join(d.hex())
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Pulls `reference` (see [`Reference`]) unless already cached, verifies
    /// it and unpacks it. See the crate docs for the guarantees.
    pub async fn pull(
        &self,
        reference: &str,
        opts: &PullOptions,
    ) -> Result<PulledImage, ImageError> {
        let r = Reference::parse(reference)?;
        let mut client = LazyClient {
            store: self,
            reference: &r,
            opts,
            client: None,
        };

        let expected = r.digest.as_deref().map(Digest::parse).transpose()?;
        let (mut digest, bytes, content_type) = self
            .manifest(&mut client, r.manifest_ref(), expected.as_ref())
            .await?;
        let mut parsed = manifest::parse(&bytes, content_type.as_deref())?;
        if let Manifest::Index(list) = &parsed {
            let host = Platform::host();
            let chosen = manifest::select_platform(list, &host)?;
            let chosen_digest = Digest::parse(&chosen.digest)?;
            let (d, bytes, content_type) = self
                .manifest(&mut client, &chosen.digest, Some(&chosen_digest))
                .await?;
            digest = d;
            parsed = manifest::parse(&bytes, content_type.as_deref())?;
        }
        let (config_desc, layer_descs) = match parsed {
            Manifest::Image { config, layers } => (config, layers),
            Manifest::Index(_) => {
                return Err(ImageError::InvalidManifest {
                    detail: "an index pointing to another index is not supported".to_owned(),
                })
            }
        };
        let config_digest = Digest::parse(&config_desc.digest)?;
        let layers = layer_descs
            .iter()
            .map(|l| Digest::parse(&l.digest).map(|d| (d, l.size)))
            .collect::<Result<Vec<_>, _>>()?;

        let _pins = self.pin(
            [&digest, &config_digest]
                .into_iter()
                .chain(layers.iter().map(|(d, _)| d)),
        );
        let _lock = self.lock_digest(&digest).await;

        let config_bytes = match self.read_small_blob(&config_digest, MAX_CONFIG_BYTES)? {
            Some(b) => b,
            None => {
                let limit = MAX_CONFIG_BYTES.min(opts.max_blob_bytes);
                let what = format!("image config {config_digest}");
                self.download(
                    &mut client,
                    &config_digest,
                    Some(config_desc.size),
                    limit,
                    &what,
                )
                .await?;
                self.read_small_blob(&config_digest, limit)?
                    .ok_or_else(|| ImageError::InvalidManifest {
                        detail: format!("{what} vanished from the cache"),
                    })?
            }
        };
        let (config_file, config) = manifest::parse_config(&config_bytes)?;
        let host = Platform::host();
        if config_file.architecture.as_deref() != Some(host.architecture.as_str())
            || config_file.os.as_deref() != Some(host.os.as_str())
        {
            tracing::warn!(
                reference = %r,
                os = ?config_file.os,
                architecture = ?config_file.architecture,
                host = %host,
                "image platform differs from the host's"
            );
        }
        if let Some(rootfs) = &config_file.rootfs {
            if rootfs.diff_ids.len() != layers.len() {
                return Err(ImageError::InvalidManifest {
                    detail: format!(
                        "the manifest lists {} layers, the config {}",
                        layers.len(),
                        rootfs.diff_ids.len()
                    ),
                });
            }
        }

        let rootfs = self.rootfs_path(&digest);
        let mut layers_downloaded = 0;
        if !rootfs.is_dir() {
            let count = layers.len();
            let mut paths = Vec::with_capacity(count);
            for (i, (d, size)) in layers.iter().enumerate() {
                let path = self.blob_path(d);
                if !path.is_file() {
                    let what = format!("layer {}/{count} {d}", i + 1);
                    self.download(&mut client, d, Some(*size), opts.max_blob_bytes, &what)
                        .await?;
                    layers_downloaded += 1;
                }
                paths.push((d.clone(), path));
            }
            let unpack = UnpackOptions {
                max_bytes: opts.max_rootfs_bytes,
                max_entries: opts.max_rootfs_entries,
                allow_devices: false,
                whiteouts: true,
                preserve_owner: true,
            };
            let (tmp, dest) = (self.tmp_dir(), rootfs.clone());
            tokio::task::spawn_blocking(move || build_rootfs(&tmp, &dest, &paths, unpack))
                .await
                .map_err(|e| ImageError::Io {
                    context: "unpacking layers".to_owned(),
                    source: io::Error::other(e.to_string()),
                })??;
            tracing::info!(reference = %r, digest = %digest, layers_downloaded, "image unpacked");
        }

        let given = reference.split_once('@').map_or(reference, |(n, _)| n);
        Ok(PulledImage {
            reference: r.to_string(),
            pinned: format!("{given}@{digest}"),
            manifest_digest: digest.to_string(),
            config,
            rootfs,
            layers_downloaded,
        })
    }

    /// A manifest by tag or digest: from the cache when the digest is known
    /// and cached, else from the registry, verified and then cached.
    async fn manifest(
        &self,
        client: &mut LazyClient<'_>,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<(Digest, Vec<u8>, Option<String>), ImageError> {
        if let Some(d) = expected {
            if let Some(bytes) = self.read_small_blob(d, MAX_MANIFEST_BYTES)? {
                return Ok((d.clone(), bytes, None));
            }
        }
        let fetched = client.get()?.get_manifest(reference).await?;
        let actual = Digest::of(&fetched.bytes);
        let what = format!("manifest {reference}");
        match (expected, &fetched.header_digest) {
            (Some(d), _) if *d != actual => {
                return Err(ImageError::DigestMismatch {
                    what,
                    expected: d.to_string(),
                    actual: actual.to_string(),
                })
            }
            (None, Some(h)) if h.starts_with("sha256:") && *h != actual.to_string() => {
                return Err(ImageError::DigestMismatch {
                    what: format!("{what} (Docker-Content-Digest header)"),
                    expected: h.clone(),
                    actual: actual.to_string(),
                })
            }
            _ => {}
        }
        self.write_small_blob(&actual, &fetched.bytes)?;
        Ok((actual, fetched.bytes, fetched.content_type))
    }

    /// Downloads a blob into the cache: into `tmp/` while hashed, renamed
    /// into place only when it matches.
    async fn download(
        &self,
        client: &mut LazyClient<'_>,
        d: &Digest,
        size: Option<u64>,
        limit: u64,
        what: &str,
    ) -> Result<(), ImageError> {
        let client = client.get()?;
        let tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.tmp_dir())
            .map_err(ImageError::io("creating a temporary file"))?;
        let file = tmp
            .as_file()
            .try_clone()
            .map_err(ImageError::io("opening a temporary file"))?;
        let mut file = tokio::fs::File::from_std(file);
        client
            .download_blob(d, size, limit, &mut file, what)
            .await?;
        drop(file);
        tmp.persist(self.blob_path(d)).map_err(|e| ImageError::Io {
            context: format!("storing {what}"),
            source: e.error,
        })?;
        Ok(())
    }

    /// A cached blob, checked against its digest (a bad one is deleted and
    /// reported missing).
    fn read_small_blob(&self, d: &Digest, limit: u64) -> Result<Option<Vec<u8>>, ImageError> {
        let path = self.blob_path(d);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ImageError::Io {
                    context: format!("reading {}", path.display()),
                    source: e,
                })
            }
        };
        let mut bytes = Vec::new();
        file.take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(ImageError::io(format!("reading {}", path.display())))?;
        if bytes.len() as u64 > limit || Digest::of(&bytes) != *d {
            tracing::warn!(blob = %d, "cached blob is corrupt; dropping it");
            let _ = fs::remove_file(&path);
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    fn write_small_blob(&self, d: &Digest, bytes: &[u8]) -> Result<(), ImageError> {
        let path = self.blob_path(d);
        if path.is_file() {
            return Ok(());
        }
        let mut tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.tmp_dir())
            .map_err(ImageError::io("creating a temporary file"))?;
        io::Write::write_all(&mut tmp, bytes)
            .map_err(ImageError::io("writing a temporary file"))?;
        tmp.persist(&path).map_err(|e| ImageError::Io {
            context: format!("storing {}", path.display()),
            source: e.error,
        })?;
        Ok(())
    }

    fn pin<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) -> PinGuard {
        let hexes: Vec<String> = digests.into_iter().map(|d| d.hex().to_owned()).collect();
        let mut pins = lock(&self.shared.pins);
        for h in &hexes {
            *pins.entry(h.clone()).or_default() += 1;
        }
        PinGuard {
            shared: Arc::clone(&self.shared),
            hexes,
        }
    }

    async fn lock_digest(&self, d: &Digest) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut locks = lock(&self.shared.locks);
            locks.retain(|_, m| Arc::strong_count(m) > 1);
            Arc::clone(locks.entry(d.clone()).or_default())
        };
        m.lock_owned().await
    }

    /// Removes the root filesystems and blobs not reachable from `keep`
    /// (manifest digests, `sha256:…`; an index digest keeps its manifests)
    /// and never what a pull in progress in this process uses. Also removes
    /// temporary leftovers of crashed pulls. Returns the bytes freed
    /// (apparent file sizes). Blocking (it deletes trees): call it from
    /// `spawn_blocking` in async code. Instances still using a removed
    /// rootfs are the caller's business: keep their digests.
    pub fn gc(&self, keep: &[String]) -> Result<u64, ImageError> {
        let keep = keep
            .iter()
            .map(|s| Digest::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        let mut live_blobs = HashSet::new();
        let mut live_rootfs = HashSet::new();
        for d in &keep {
            live_rootfs.insert(d.hex().to_owned());
            self.mark(d, &mut live_blobs, &mut live_rootfs, 0)?;
        }

        let mut freed = 0;
        let mut seen = HashSet::new();
        let io_err = |what: &str| ImageError::io(format!("gc: {what}"));

        let rootfs_dir = self.root.join("rootfs");
        for entry in fs::read_dir(&rootfs_dir).map_err(io_err("listing rootfs"))? {
            let entry = entry.map_err(io_err("listing rootfs"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if live_rootfs.contains(&name) {
                continue;
            }
            // Moved out of sight under the pin lock, so a pull either pins
            // it first or finds it gone and rebuilds it.
            let doomed = {
                let pins = lock(&self.shared.pins);
                if pins.contains_key(&name) {
                    continue;
                }
                let doomed = self.tmp_dir().join(format!("gc-{name}-{}", unique()));
                fs::rename(entry.path(), &doomed).map_err(io_err("moving a rootfs away"))?;
                doomed
            };
            freed += remove_tree(&doomed, &mut seen).map_err(io_err("removing a rootfs"))?;
        }

        let blobs_dir = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&blobs_dir).map_err(io_err("listing blobs"))? {
            let entry = entry.map_err(io_err("listing blobs"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if live_blobs.contains(&name) {
                continue;
            }
            let pins = lock(&self.shared.pins);
            if pins.contains_key(&name) {
                continue;
            }
            freed += remove_tree(&entry.path(), &mut seen).map_err(io_err("removing a blob"))?;
        }

        // Leftovers of crashed pulls, when no pull of ours is running.
        if lock(&self.shared.pins).is_empty() {
            let now = SystemTime::now();
            for entry in fs::read_dir(self.tmp_dir()).map_err(io_err("listing tmp"))? {
                let entry = entry.map_err(io_err("listing tmp"))?;
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > STALE_TMP);
                if old {
                    freed += remove_tree(&entry.path(), &mut seen)
                        .map_err(io_err("removing a leftover"))?;
                }
            }
        }
        Ok(freed)
    }

    /// Marks `d` and what it references (config, layers, index entries) as
    /// live, from the cached manifest.
    fn mark(
        &self,
        d: &Digest,
        blobs: &mut HashSet<String>,
        rootfs: &mut HashSet<String>,
        depth: u8,
    ) -> Result<(), ImageError> {
        blobs.insert(d.hex().to_owned());
        let Some(bytes) = self.read_small_blob(d, MAX_MANIFEST_BYTES)? else {
            return Ok(());
        };
        match manifest::parse(&bytes, None) {
            Ok(Manifest::Image { config, layers }) => {
                for desc in std::iter::once(&config).chain(&layers) {
                    if let Ok(d) = Digest::parse(&desc.digest) {
                        blobs.insert(d.hex().to_owned());
                    }
                }
            }
            Ok(Manifest::Index(list)) if depth == 0 => {
                for desc in &list {
                    if let Ok(child) = Digest::parse(&desc.digest) {
                        rootfs.insert(child.hex().to_owned());
                        self.mark(&child, blobs, rootfs, depth + 1)?;
                    }
                }
            }
            Ok(Manifest::Index(_)) | Err(_) => {}
        }
        Ok(())
    }
}

/// Unpacks the layers into a fresh directory under `tmp` and renames it to
/// `dest`. Each layer blob is hashed again while read: a corrupt cached blob
/// is deleted and the pull fails, leaving no rootfs.
fn build_rootfs(
    tmp: &Path,
    dest: &Path,
    layers: &[(Digest, PathBuf)],
    opts: UnpackOptions,
) -> Result<(), ImageError> {
    if dest.is_dir() {
        return Ok(());
    }
    let work = TempTree::new_in(tmp, "rootfs-")
        .map_err(ImageError::io("creating a temporary directory"))?;
    let mut unpacker = Unpacker::new(&work.path, opts)?;
    for (i, (digest, path)) in layers.iter().enumerate() {
        let what = format!("layer {}/{} {digest}", i + 1, layers.len());
        let file = File::open(path).map_err(ImageError::io(format!("opening {what}")))?;
        let mut reader = HashingReader::new(file);
        let applied = unpacker.apply(&mut reader);
        let (actual, _) = reader
            .finish()
            .map_err(ImageError::io(format!("reading {what}")))?;
        if actual != *digest {
            let _ = fs::remove_file(path);
            return Err(ImageError::DigestMismatch {
                what: format!("cached {what}"),
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        applied?;
    }
    unpacker.finish()?;
    fs::set_permissions(&work.path, fs::Permissions::from_mode(0o755))
        .map_err(ImageError::io("setting rootfs mode"))?;
    match fs::rename(&work.path, dest) {
        Ok(()) => {
            work.disarm();
            Ok(())
        }
        // Another process finished first; ours is dropped.
        Err(_) if dest.is_dir() => Ok(()),
        Err(e) => Err(ImageError::Io {
            context: format!("moving the rootfs to {}", dest.display()),
            source: e,
        }),
    }
}

fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// A directory removed on drop unless disarmed.
struct TempTree {
    path: PathBuf,
    armed: bool,
}

impl TempTree {
    fn new_in(dir: &Path, prefix: &str) -> io::Result<Self> {
        let d = tempfile::Builder::new().prefix(prefix).tempdir_in(dir)?;
        Ok(TempTree {
            path: d.keep(),
            armed: true,
        })
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = remove_tree(&self.path, &mut HashSet::new()) {
                tracing::warn!(path = %self.path.display(), error = %e, "could not remove a temporary directory");
            }
        }
    }
}

struct PinGuard {
    shared: Arc<Shared>,
    hexes: Vec<String>,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut pins = lock(&self.shared.pins);
        for h in &self.hexes {
            if let Some(n) = pins.get_mut(h) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(h);
                }
            }
        }
    }
}

/// The registry client, made only when something must be fetched (a pull
/// by digest that is fully cached needs no network).
struct LazyClient<'a> {
    store: &'a ImageStore,
    reference: &'a Reference,
    opts: &'a PullOptions,
    client: Option<RegistryClient>,
}

impl LazyClient<'_> {
    fn get(&mut self) -> Result<&RegistryClient, ImageError> {
        let client = match self.client.take() {
            Some(c) => c,
            None => {
                let r = self.reference;
                let insecure = self.opts.insecure_registries.iter().any(|h| {
                    h.eq_ignore_ascii_case(&r.registry) || h.eq_ignore_ascii_case(r.api_host())
                });
                let scheme = if insecure { "http" } else { "https" };
                let base = Url::parse(&format!("{scheme}://{}/", r.api_host())).map_err(|e| {
                    ImageError::InvalidReference {
                        reference: r.to_string(),
                        reason: format!("registry is not a valid host: {e}"),
                    }
                })?;
                // An IP-literal registry is judged before any connection
                // (names are judged by the client's resolver).
                self.store
                    .guard
                    .check_target(&base)
                    .map_err(|reason| ImageError::Refused {
                        registry: r.registry.clone(),
                        url: base.to_string(),
                        reason,
                    })?;
                RegistryClient::new(
                    self.store.http.clone(),
                    base,
                    r.registry.clone(),
                    r.repository.clone(),
                    self.opts.auth.clone(),
                    "pull",
                )
            }
        };
        Ok(self.client.insert(client))
    }
}
