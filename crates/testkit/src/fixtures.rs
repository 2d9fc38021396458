//! What tests and benchmarks deploy and seed: the sample app
//! (`examples/hello`), busybox root filesystems, archives of them, apps
//! that serve HTTP, and organizations with an owner.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::api::Api;
use crate::platform::Platform;

/// The repository's `examples/hello` (tests that need its files on disk;
/// [`write_hello`] works from an installed binary too).
pub const HELLO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/hello");

/// `examples/hello`'s Procfile and server, compiled in.
pub const HELLO_PROCFILE: &str = include_str!("../../../examples/hello/Procfile");
pub const HELLO_SERVER_PY: &str = include_str!("../../../examples/hello/server.py");

/// `examples/hello` (a Procfile and a python3 HTTP server answering its
/// instance id as JSON, `/health` for health checks) written into `dir`.
pub fn write_hello(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("Procfile"), HELLO_PROCFILE)?;
    std::fs::write(dir.join("server.py"), HELLO_SERVER_PY)?;
    Ok(())
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

/// `examples/hello` as `<dir>/hello.tgz` (to upload); its path.
pub fn hello_tarball(dir: &Path) -> PathBuf {
    let src = dir.join("hello-src");
    write_hello(&src).unwrap();
    let archive = dir.join("hello.tgz");
    std::fs::write(&archive, tar_gz(&src).unwrap()).unwrap();
    archive
}

/// `examples/hello` as a gzipped tarball's bytes.
pub fn hello_tar_gz() -> anyhow::Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    write_hello(dir.path())?;
    tar_gz(dir.path())
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
pub fn elf_has_interpreter(elf: &[u8]) -> bool {
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

/// An app whose instances serve HTTP: `examples/hello` uploaded as a
/// tarball (python3; the process driver runs it anywhere), health-checked
/// on `/health` every second. Made with [`app_serving`].
#[derive(Debug, Clone)]
pub struct AppServing {
    pub name: String,
    pub replicas: i64,
    /// Members merged into the body (`env`, `resources`, …).
    pub extra: Value,
}

/// [`AppServing`] named `name` with `replicas` replicas.
pub fn app_serving(name: &str, replicas: i64) -> AppServing {
    AppServing {
        name: name.to_string(),
        replicas,
        extra: json!({}),
    }
}

impl AppServing {
    /// Merge `extra`'s members into the body.
    pub fn with(mut self, extra: Value) -> Self {
        if let (Some(into), Some(from)) = (self.extra.as_object_mut(), extra.as_object()) {
            into.extend(from.clone());
        }
        self
    }

    /// The `POST /v1/apps` body, the archive being upload `upload_id`.
    pub fn body(&self, upload_id: &str) -> Value {
        let mut b = json!({
            "name": self.name,
            "replicas": self.replicas,
            "source": {"type": "tarball", "upload_id": upload_id},
            "health_check": {"path": "/health", "interval": "1s"},
        });
        if let (Some(into), Some(from)) = (b.as_object_mut(), self.extra.as_object()) {
            into.extend(from.clone());
        }
        b
    }

    /// Upload the app and create it through `api`: the created app.
    pub async fn create(&self, api: &Api) -> anyhow::Result<Value> {
        let upload = api.upload(hello_tar_gz()?).await?;
        api.post("/v1/apps", &self.body(&upload)).await
    }

    /// [`AppServing::create`] on `p`, blocking; panics unless created.
    pub fn create_on(&self, p: &Platform) -> Value {
        let upload = p.upload(&hello_tar_gz().unwrap());
        let (st, created) = p.call(reqwest::Method::POST, "/v1/apps", Some(self.body(&upload)));
        assert_eq!(st, 201, "{created}");
        created
    }
}

#[cfg(feature = "server")]
pub use store::*;

#[cfg(feature = "server")]
mod store {
    use shellwego_core::plan::Plan;
    use shellwego_core::token::TokenKind;
    use shellwego_store::tokens::NewTokenSpec;
    use shellwego_store::{commit, orgs, tokens, users, Store};

    /// An organization, its owner and a token of theirs.
    #[derive(Debug, Clone)]
    pub struct OrgWithOwner {
        pub org: String,
        pub user: String,
        /// The owner's personal access token (its secret).
        pub token: String,
    }

    /// A new organization on `plan` (named after `email`) with one owner,
    /// `email`, and a personal access token for them, straight in the
    /// store (what bootstrap makes for the admin).
    pub async fn org_with_owner(store: &Store, plan: Plan, email: &str) -> OrgWithOwner {
        let mut tx = store.begin().await.unwrap();
        let org = orgs::create(&mut tx, email, &shellwego_core::id::new_id("slug"), plan)
            .await
            .unwrap();
        commit(tx).await.unwrap();
        let (user, token) = member_with_role(store, &org.id, "owner", email).await;
        OrgWithOwner {
            org: org.id,
            user,
            token,
        }
    }

    /// A new user `email` with `role` in `org`, and a token of theirs
    /// there: (user, token).
    pub async fn member_with_role(
        store: &Store,
        org: &str,
        role: &str,
        email: &str,
    ) -> (String, String) {
        let mut tx = store.begin().await.unwrap();
        let user = users::create(&mut tx, email, "Test User", "x")
            .await
            .unwrap();
        orgs::add_member(&mut tx, org, &user.id, role)
            .await
            .unwrap();
        let (_, secret) = tokens::create(
            &mut tx,
            NewTokenSpec {
                kind: TokenKind::Pat,
                name: "test",
                user_id: Some(&user.id),
                service_account_id: None,
                organization_id: org,
                scope: &[],
                restrict_to_apps: &[],
                expires_at: None,
            },
        )
        .await
        .unwrap();
        commit(tx).await.unwrap();
        (user.id, secret)
    }
}
