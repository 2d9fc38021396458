//! App logs: the lines of `GET /v1/apps/{id}/logs` (and its follow
//! streams), and the wire types a node's agent and the control plane
//! exchange about them (a query task's answer, a follow's pushes).

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Lines a query returns when `tail` is not given.
pub const DEFAULT_TAIL: u32 = 100;
/// The most lines one query returns.
pub const MAX_TAIL: u32 = 10_000;
/// The longest message kept of one line (bytes; longer output is split
/// into several lines).
pub const MAX_LINE: usize = 16 * 1024;

/// How severe a line is, least first. A filter `level=warn` keeps `warn`
/// and `error`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }

    /// The level a word names (`INFO`, `warning`, `err`, `fatal`, …),
    /// case-insensitive; none for any other word.
    pub fn from_word(w: &str) -> Option<LogLevel> {
        let w = w.to_ascii_lowercase();
        Some(match w.as_str() {
            "trace" | "debug" | "dbg" | "verbose" => LogLevel::Debug,
            "info" | "information" | "notice" | "inf" => LogLevel::Info,
            "warn" | "warning" | "wrn" => LogLevel::Warn,
            "error" | "err" | "fatal" | "critical" | "crit" | "panic" | "alert" | "emerg"
            | "emergency" | "severe" => LogLevel::Error,
            _ => return None,
        })
    }
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "debug" => Ok(LogLevel::Debug),
            "info" => Ok(LogLevel::Info),
            "warn" | "warning" => Ok(LogLevel::Warn),
            "error" => Ok(LogLevel::Error),
            _ => Err(format!("{s}: use debug, info, warn or error")),
        }
    }
}

/// One line of an app's output, as the API shows it (the JSON of
/// `Accept: application/x-ndjson`, of the follow streams' messages).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogEntry {
    /// When the node read the line (RFC 3339, microseconds).
    #[schema(example = "2024-01-20T10:00:00.000000Z")]
    pub timestamp: String,
    pub level: LogLevel,
    #[schema(example = "inst_9x2k3m8s1d")]
    pub instance_id: String,
    /// `stdout` or `stderr` (a microVM's console is `stdout`).
    #[schema(example = "stdout")]
    pub stream: String,
    #[schema(example = "node_8s2d9k1m3x")]
    pub node_id: String,
    #[schema(example = "Server started on port 8080")]
    pub message: String,
}

impl LogEntry {
    /// The spec's text form: `[ts] [LEVEL] [inst_id] message`.
    pub fn text(&self) -> String {
        format!(
            "[{}] [{}] [{}] {}",
            self.timestamp,
            self.level.as_str().to_ascii_uppercase(),
            self.instance_id,
            self.message
        )
    }
}

/// The query string of `GET /v1/apps/{id}/logs` and `…/logs/stream`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsParams {
    /// Keep streaming new lines (Server-Sent Events) after the last ones.
    pub follow: Option<bool>,
    /// RFC 3339 timestamp, or a time ago: `30s`, `15m`, `1h`, `7d`.
    pub since: Option<String>,
    /// RFC 3339 timestamp, or a time ago.
    pub until: Option<String>,
    /// The last this many lines (default 100, at most 10000).
    pub tail: Option<u32>,
    /// Only this instance's lines.
    pub instance_id: Option<String>,
    /// This level and above: debug, info, warn or error.
    pub level: Option<String>,
    /// Lines containing this text (case-insensitive).
    pub search: Option<String>,
}

// --- between the control plane and a node's agent ---

/// One stored line, as a node's agent keeps and sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogLine {
    /// Microseconds since the Unix epoch: when the agent read the line.
    /// Unique and increasing across one app's lines on one node.
    pub t: i64,
    pub instance_id: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub level: LogLevel,
    pub message: String,
}

/// What lines a query or a follow wants (besides the app).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// This level and above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// Lowercase; lines containing it, case-insensitive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<String>,
}

impl LogFilter {
    pub fn matches(&self, l: &LogLine) -> bool {
        if self
            .instance_id
            .as_ref()
            .is_some_and(|i| *i != l.instance_id)
        {
            return false;
        }
        if self.level.is_some_and(|min| l.level < min) {
            return false;
        }
        match &self.search {
            Some(s) => contains_ignoring_case(&l.message, s),
            None => true,
        }
    }
}

/// `hay` contains `needle` (already lowercase), ignoring ASCII case and,
/// beyond ASCII, Unicode lowercase.
pub fn contains_ignoring_case(hay: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return true;
    }
    if hay.is_ascii() && needle.is_ascii() {
        let (h, n) = (hay.as_bytes(), needle.as_bytes());
        return h.len() >= n.len() && h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n));
    }
    hay.to_lowercase().contains(needle)
}

/// A query task's request: the last `tail` lines of the app within
/// `[since, until]` that pass the filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogQuery {
    pub app_id: String,
    /// Microseconds since the epoch, inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    pub tail: u32,
    #[serde(default)]
    pub filter: LogFilter,
}

/// A follow the control plane holds open: the agent pushes every new line
/// of the app that passes the filter (`POST /v1/agent/logs`) until the
/// follow is no longer in its desired state (or the push answers 404).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogFollow {
    #[schema(example = "lgf_2v8s9d2k1m")]
    pub id: String,
    pub app_id: String,
    #[serde(default)]
    pub filter: LogFilter,
}

/// How long and how much of an app's output each node keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogPolicy {
    /// Lines older than this are deleted.
    pub retention_secs: u64,
    /// The most bytes of the app's stored lines on one node; the oldest go
    /// first.
    pub max_bytes: u64,
}

/// An app's log settings as a desired instance carries them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

impl LogSettings {
    pub fn is_empty(&self) -> bool {
        self.retention_secs.is_none() && self.max_bytes.is_none()
    }

    /// These settings over a node's defaults.
    pub fn over(&self, defaults: LogPolicy) -> LogPolicy {
        LogPolicy {
            retention_secs: self.retention_secs.unwrap_or(defaults.retention_secs),
            max_bytes: self.max_bytes.unwrap_or(defaults.max_bytes),
        }
    }
}

/// `POST /v1/agent/logs`: new lines for a follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogPush {
    pub follow_id: String,
    pub lines: Vec<LogLine>,
    /// Lines left out since the last push because the follow fell behind.
    #[serde(default)]
    pub dropped: u64,
}

impl crate::Validate for LogPush {
    fn validate(&self) -> Result<(), shellwego_core::Error> {
        if self.follow_id.is_empty() {
            return Err(shellwego_core::Error::field(
                "follow_id",
                "required",
                "name the follow the lines are for",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_order_and_filters() {
        assert!(LogLevel::Debug < LogLevel::Info && LogLevel::Warn < LogLevel::Error);
        let line = |level, m: &str| LogLine {
            t: 1,
            instance_id: "inst_a".into(),
            stream: "stdout".into(),
            level,
            message: m.into(),
        };
        let f = LogFilter {
            instance_id: None,
            level: Some(LogLevel::Warn),
            search: Some("disk".into()),
        };
        assert!(f.matches(&line(LogLevel::Error, "DISK full")));
        assert!(!f.matches(&line(LogLevel::Info, "disk full")));
        assert!(!f.matches(&line(LogLevel::Warn, "cpu hot")));
        assert!(contains_ignoring_case("Grüße ÄPFEL", "äpfel"));
        assert_eq!(LogLevel::from_word("WARNING"), Some(LogLevel::Warn));
        assert_eq!(LogLevel::from_word("starting"), None);
        assert!("verbose".parse::<LogLevel>().is_err());
    }
}
