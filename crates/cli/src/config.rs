//! Settings of `shellwego server`/`up`: flags, then environment variables,
//! then the TOML config file, then defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use shellwego_core::units::parse_duration;
use shellwego_server::ServerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (for log shippers).
    Json,
    /// Human-readable lines.
    Pretty,
}

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// TOML config file (see config/shellwego.example.toml).
    #[arg(long, env = "SHELLWEGO_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:3000].
    #[arg(long, env = "SHELLWEGO_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Directory for the SQLite store, the admin token and other state [default: ./.shellwego].
    #[arg(long, env = "SHELLWEGO_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Store URL: sqlite://PATH or postgres://USER@HOST/DB [default: SQLite in the data dir].
    #[arg(long, env = "SHELLWEGO_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// Log format [default: pretty].
    #[arg(long, env = "SHELLWEGO_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// How long in-flight requests may run after SIGTERM/SIGINT [default: 30s].
    #[arg(long, env = "SHELLWEGO_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    pub shutdown_timeout: Option<String>,
    /// A node whose agent is silent this long becomes offline [default: 30s].
    #[arg(long, env = "SHELLWEGO_NODE_TIMEOUT", value_name = "DURATION")]
    pub node_timeout: Option<String>,
}

/// The config file. Every key is optional; unknown keys are errors.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub log_format: Option<LogFormat>,
    pub shutdown_timeout: Option<String>,
    pub node_timeout: Option<String>,
    /// Private targets user-given URLs may reach (`[ssrf]`).
    pub ssrf: Option<shellwego_net::ssrf::SsrfConfig>,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

pub struct Settings {
    pub server: ServerConfig,
    pub log_format: LogFormat,
}

impl ServerArgs {
    pub fn resolve(self, _up: bool) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let listen = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 3000)));
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./.shellwego"));
        let mut server = ServerConfig::new(listen, data_dir);
        server.database_url = self.database_url.or(file.database_url);
        if let Some(url) = &server.database_url {
            if shellwego_store::Backend::of_url(url).is_none() {
                bail!("--database-url must start with sqlite: or postgres:// (got '{url}')");
            }
        }
        if let Some(t) = self.shutdown_timeout.or(file.shutdown_timeout) {
            server.shutdown_timeout = parse_duration(&t)
                .with_context(|| format!("shutdown timeout '{t}' is not a duration such as 30s"))?;
        }
        if let Some(t) = self.node_timeout.or(file.node_timeout) {
            server.node_timeout = parse_duration(&t)
                .filter(|d| d.as_secs() >= 1)
                .with_context(|| format!("node timeout '{t}' is not a duration such as 30s"))?;
        }
        server.ssrf = file.ssrf.unwrap_or_default();
        server.master_key = std::env::var("SHELLWEGO_MASTER_KEY")
            .ok()
            .filter(|s| !s.is_empty());
        server.admin_password = std::env::var("SHELLWEGO_ADMIN_PASSWORD")
            .ok()
            .filter(|s| !s.is_empty());
        Ok(Settings {
            server,
            log_format: self
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Pretty),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/shellwego.example.toml");
        let cfg = FileConfig::load(&path).unwrap();
        assert_eq!(cfg.listen, Some(SocketAddr::from(([127, 0, 0, 1], 3000))));
        assert_eq!(cfg.log_format, Some(LogFormat::Pretty));
        assert!(parse_duration(cfg.shutdown_timeout.as_deref().unwrap()).is_some());
        // The SSRF guard's section, at its strict default.
        assert_eq!(cfg.ssrf, Some(shellwego_net::ssrf::SsrfConfig::default()));
    }

    #[test]
    fn the_ssrf_section_reaches_the_server_config() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[ssrf]\nallow = [\"10.1.0.0/16\", \"fd00:1::/32\"]\nallow_private_targets = true\n",
        )
        .unwrap();
        let s = ServerArgs {
            config: Some(p.clone()),
            listen: None,
            data_dir: None,
            database_url: None,
            log_format: None,
            shutdown_timeout: None,
            node_timeout: None,
        }
        .resolve(false)
        .unwrap();
        assert_eq!(
            s.server.ssrf.allow,
            vec![
                "10.1.0.0/16".parse().unwrap(),
                "fd00:1::/32".parse().unwrap()
            ]
        );
        assert!(s.server.ssrf.allow_private_targets);
        // A bare address is not a network; an unknown key is a typo.
        for bad in [
            "[ssrf]\nallow = [\"10.1.2.3\"]\n",
            "[ssrf]\nallow_private = true\n",
        ] {
            std::fs::write(&p, bad).unwrap();
            assert!(FileConfig::load(&p).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<FileConfig>("listn = \"127.0.0.1:1\"").is_err());
    }

    #[test]
    fn flags_beat_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "listen = \"127.0.0.1:4000\"\ndata_dir = \"/tmp/x\"\nshutdown_timeout = \"5s\"\n",
        )
        .unwrap();
        let args = ServerArgs {
            config: Some(p),
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 5000))),
            data_dir: None,
            database_url: None,
            log_format: None,
            shutdown_timeout: None,
            node_timeout: None,
        };
        let s = args.resolve(false).unwrap();
        assert_eq!(s.server.listen.port(), 5000);
        assert_eq!(s.server.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(s.server.shutdown_timeout.as_secs(), 5);
    }
}
