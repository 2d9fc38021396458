//! The CLI's credentials file, `$XDG_CONFIG_HOME/shellwego/credentials.toml`
//! (else `$HOME/.config/shellwego/credentials.toml`): the API URL and the
//! token `shellwego auth login` got, with the token's id so `logout` can
//! revoke it. Written atomically (temp file + rename) with mode 0600.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};

/// The API a fresh CLI talks to.
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:3000";

const HEADER: &str = "# Written by `shellwego auth login`; removed by `shellwego auth logout`.\n\
# It holds an API token: keep it private (mode 0600).\n";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
}

/// Where the file is, from the environment.
pub fn default_path() -> Option<PathBuf> {
    path_from(
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    )
}

/// `$XDG_CONFIG_HOME/shellwego/credentials.toml` when that variable is an
/// absolute path (the XDG spec ignores relative ones), else
/// `$HOME/.config/shellwego/credentials.toml`.
pub fn path_from(xdg_config_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let config = xdg_config_home
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            home.map(PathBuf::from)
                .filter(|p| !p.as_os_str().is_empty())
                .map(|h| h.join(".config"))
        })?;
    Some(config.join("shellwego").join("credentials.toml"))
}

/// The file's contents; `None` when there is no file.
pub fn load(path: &Path) -> anyhow::Result<Option<Credentials>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    warn_if_readable_by_others(path);
    toml::from_str(&text)
        .map(Some)
        .with_context(|| format!("invalid credentials file {}", path.display()))
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            eprintln!(
                "warning: {} is accessible by other users (mode {mode:o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// Write the file atomically: a temp file (mode 0600) in the same
/// directory, synced, then renamed over the old one. The directory is
/// created with mode 0700 when missing.
pub fn save(path: &Path, creds: &Credentials) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", path.display()))?;
    create_private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let text = format!("{HEADER}{}", toml::to_string(creds)?);
    let mut tmp = tempfile::Builder::new()
        .prefix(".credentials")
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    restrict(tmp.as_file())?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| anyhow!("cannot write {}: {}", path.display(), e.error))?;
    Ok(())
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn restrict(f: &std::fs::File) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

#[cfg(not(unix))]
fn restrict(_f: &std::fs::File) -> anyhow::Result<()> {
    Ok(())
}

/// The first value that is set and not empty: a flag or its environment
/// variable (clap merges the two, flag first), then the credentials file.
pub fn pick(flag_or_env: Option<&str>, file: Option<&str>) -> Option<String> {
    [flag_or_env, file]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_prefers_an_absolute_xdg_config_home() {
        assert_eq!(
            path_from(Some("/x".into()), Some("/home/u".into())),
            Some(PathBuf::from("/x/shellwego/credentials.toml"))
        );
        assert_eq!(
            path_from(Some("rel".into()), Some("/home/u".into())),
            Some(PathBuf::from("/home/u/.config/shellwego/credentials.toml"))
        );
        assert_eq!(
            path_from(None, Some("/home/u".into())),
            Some(PathBuf::from("/home/u/.config/shellwego/credentials.toml"))
        );
        assert_eq!(path_from(None, None), None);
        assert_eq!(path_from(Some("".into()), Some("".into())), None);
    }

    #[test]
    fn pick_takes_the_first_non_empty_value() {
        assert_eq!(pick(Some("a"), Some("b")).as_deref(), Some("a"));
        assert_eq!(pick(Some(""), Some("b")).as_deref(), Some("b"));
        assert_eq!(pick(None, Some("b")).as_deref(), Some("b"));
        assert_eq!(pick(None, Some(" ")), None);
    }

    #[test]
    fn save_then_load_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg/shellwego/credentials.toml");
        assert_eq!(load(&path).unwrap(), None);
        let c = Credentials {
            api_url: Some("http://127.0.0.1:3000".into()),
            email: Some("a@b".into()),
            token: Some("pat_x".into()),
            token_id: Some("tok_y".into()),
        };
        save(&path, &c).unwrap();
        assert_eq!(load(&path).unwrap(), Some(c.clone()));
        // Overwriting keeps the mode, and leaves no temp file behind.
        save(&path, &Credentials::default()).unwrap();
        assert_eq!(load(&path).unwrap(), Some(Credentials::default()));
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("credentials.toml")]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(path.parent().unwrap()), 0o700);
        }
    }

    #[test]
    fn a_broken_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.toml");
        std::fs::write(&path, "token = [").unwrap();
        let e = format!("{:#}", load(&path).unwrap_err());
        assert!(e.contains("credentials.toml"), "{e}");
    }
}
