//! Settings of `shellwego server`/`up`: flags, then environment variables,
//! then the TOML config file, then defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Where uploaded archives and other objects are kept: database,
    /// file:///DIR or s3://BUCKET[/PREFIX] [default: database with
    /// PostgreSQL, the data dir with SQLite]. Replicas sharing a database
    /// must share this too.
    #[arg(long, env = "SHELLWEGO_STORAGE_URL", value_name = "URL")]
    pub storage_url: Option<String>,
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
    pub storage_url: Option<String>,
    pub log_format: Option<LogFormat>,
    pub shutdown_timeout: Option<String>,
    pub node_timeout: Option<String>,
    /// Private targets user-given URLs may reach (`[ssrf]`).
    pub ssrf: Option<shellwego_net::ssrf::SsrfConfig>,
    /// Proxies (CIDRs) whose `X-Forwarded-For`/`Forwarded` are believed.
    pub trusted_proxies: Option<Vec<ipnet::IpNet>>,
    /// How many Free-plan organizations one user may own.
    pub max_free_orgs_per_user: Option<u32>,
    /// Timeouts and connection caps of the listeners (`[http]`).
    pub http: Option<HttpSection>,
    /// How webhook deliveries are sent and retried (`[webhooks]`).
    pub webhooks: Option<WebhooksSection>,
    /// How long app metrics are kept per resolution (`[metrics]`).
    pub metrics: Option<MetricsSection>,
}

/// `[metrics]`: how long each resolution of app metrics is kept.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// 10-second samples (default 24h).
    pub raw: Option<String>,
    /// 1-minute points (default 7d).
    pub minute: Option<String>,
    /// 1-hour points (default 90d).
    pub hour: Option<String>,
    /// 1-day points (default 365d).
    pub day: Option<String>,
}

impl MetricsSection {
    pub fn settings(&self) -> anyhow::Result<shellwego_server::service::metrics::Retention> {
        let mut r = shellwego_server::service::metrics::Retention::default();
        for (key, v, into) in [
            ("raw", &self.raw, &mut r.raw),
            ("minute", &self.minute, &mut r.minute),
            ("hour", &self.hour, &mut r.hour),
            ("day", &self.day, &mut r.day),
        ] {
            if let Some(t) = v {
                *into = parse_duration(t)
                    .filter(|d| d.as_secs() >= 60)
                    .with_context(|| {
                        format!("[metrics] {key} = '{t}' is not a duration of a minute or more, such as 24h or 90d")
                    })?
                    .as_secs() as i64;
            }
        }
        Ok(r)
    }
}

/// `[webhooks]`: the delivery timeout, the retry base, and how long a
/// webhook may fail before it is disabled.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhooksSection {
    pub timeout: Option<String>,
    pub retry_base: Option<String>,
    pub disable_after: Option<String>,
}

impl WebhooksSection {
    /// The settings, from the defaults overridden by what is set.
    pub fn settings(&self) -> anyhow::Result<shellwego_server::ctx::WebhookConfig> {
        let mut w = shellwego_server::ctx::WebhookConfig::default();
        for (key, v, into) in [
            ("timeout", &self.timeout, &mut w.timeout),
            ("retry_base", &self.retry_base, &mut w.retry_base),
            ("disable_after", &self.disable_after, &mut w.disable_after),
        ] {
            if let Some(t) = v {
                *into = parse_duration(t)
                    .filter(|d| !d.is_zero())
                    .with_context(|| {
                        format!("[webhooks] {key} = '{t}' is not a duration such as 10s or 3d")
                    })?;
            }
        }
        Ok(w)
    }
}

/// `[http]`: how long clients may take and how many connections they may
/// hold (the API and the agent channel on its port, and the ingress).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    pub header_read_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    /// Bytes per second, or a size per second such as "1k".
    pub body_min_rate: Option<String>,
    pub idle_timeout: Option<String>,
    pub send_timeout: Option<String>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
}

impl HttpSection {
    /// The limits, from the defaults overridden by what is set.
    pub fn limits(&self) -> anyhow::Result<shellwego_net::serve::Limits> {
        let mut l = shellwego_net::serve::Limits::default();
        let dur = |key: &str, v: &Option<String>, into: &mut Duration| -> anyhow::Result<()> {
            if let Some(t) = v {
                *into = parse_duration(t)
                    .filter(|d| !d.is_zero())
                    .with_context(|| {
                        format!("[http] {key} = '{t}' is not a duration such as 10s")
                    })?;
            }
            Ok(())
        };
        dur(
            "header_read_timeout",
            &self.header_read_timeout,
            &mut l.header_read_timeout,
        )?;
        dur(
            "body_read_timeout",
            &self.body_read_timeout,
            &mut l.body_read_timeout,
        )?;
        dur("idle_timeout", &self.idle_timeout, &mut l.idle_timeout)?;
        dur("send_timeout", &self.send_timeout, &mut l.send_timeout)?;
        if let Some(r) = &self.body_min_rate {
            l.body_min_rate = shellwego_core::units::parse_size(r).with_context(|| {
                format!("[http] body_min_rate = '{r}' is not a size such as 1k (bytes per second)")
            })?;
        }
        for (key, v, into) in [
            (
                "max_connections",
                self.max_connections,
                &mut l.max_connections,
            ),
            (
                "max_connections_per_ip",
                self.max_connections_per_ip,
                &mut l.max_connections_per_ip,
            ),
        ] {
            if let Some(n) = v {
                if n == 0 {
                    bail!("[http] {key} must be at least 1");
                }
                *into = n;
            }
        }
        Ok(l)
    }
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
        server.storage_url = self.storage_url.or(file.storage_url);
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
        server.http = file.http.unwrap_or_default().limits()?;
        server.webhooks = file.webhooks.unwrap_or_default().settings()?;
        server.metrics = file.metrics.unwrap_or_default().settings()?;
        server.trusted_proxies =
            shellwego_net::client_ip::TrustedProxies::new(file.trusted_proxies.unwrap_or_default());
        if let Some(n) = file.max_free_orgs_per_user {
            server.max_free_orgs_per_user = n;
        }
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
        // The example spells out the defaults.
        assert_eq!(
            cfg.http.unwrap().limits().unwrap(),
            shellwego_net::serve::Limits::default()
        );
        assert_eq!(cfg.trusted_proxies, Some(vec![]));
        assert_eq!(cfg.max_free_orgs_per_user, Some(1));
        assert_eq!(
            cfg.webhooks.unwrap().settings().unwrap(),
            shellwego_server::ctx::WebhookConfig::default()
        );
    }

    #[test]
    fn the_webhooks_section_parses_durations() {
        let cfg: FileConfig = toml::from_str(
            "[webhooks]\ntimeout = \"2s\"\nretry_base = \"1s\"\ndisable_after = \"1h\"\n",
        )
        .unwrap();
        let w = cfg.webhooks.unwrap().settings().unwrap();
        assert_eq!(w.timeout, Duration::from_secs(2));
        assert_eq!(w.retry_base, Duration::from_secs(1));
        assert_eq!(w.disable_after, Duration::from_secs(3600));
        let bad: FileConfig = toml::from_str("[webhooks]\ntimeout = \"soon\"\n").unwrap();
        assert!(bad.webhooks.unwrap().settings().is_err());
        assert!(toml::from_str::<FileConfig>("[webhooks]\nretries = 3\n").is_err());
    }

    #[test]
    fn http_limits_and_trusted_proxies_parse() {
        let cfg: FileConfig = toml::from_str(
            "trusted_proxies = [\"10.0.0.0/8\", \"::1/128\"]\n[http]\nheader_read_timeout = \"2s\"\nbody_min_rate = \"4k\"\nmax_connections_per_ip = 7\n",
        )
        .unwrap();
        let l = cfg.http.unwrap().limits().unwrap();
        assert_eq!(l.header_read_timeout, Duration::from_secs(2));
        assert_eq!(l.body_min_rate, 4096);
        assert_eq!(l.max_connections_per_ip, 7);
        assert_eq!(cfg.trusted_proxies.unwrap().len(), 2);
        let bad: FileConfig = toml::from_str("[http]\nidle_timeout = \"soon\"\n").unwrap();
        assert!(bad.http.unwrap().limits().is_err());
        assert!(toml::from_str::<FileConfig>("trusted_proxies = [\"not-a-cidr\"]").is_err());
    }

    #[test]
    fn the_example_ssrf_section_is_strict() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/shellwego.example.toml");
        let cfg = FileConfig::load(&path).unwrap();
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
            storage_url: None,
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
            storage_url: None,
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
