//! A line's level, read from the common formats: a JSON object's `level`
//! (or `lvl`, `severity`, `log.level`), logfmt's `level=…`, a bracketed
//! `[INFO]`/`<warn>` or an upper-case `ERROR`/`WARN:` among the first few
//! words (after a timestamp, say). Otherwise `info` on stdout and `error`
//! on stderr.

use shellwego_api::logs::LogLevel;

/// How many leading words are looked at for a level word.
const WORDS: usize = 4;

pub fn classify(message: &str, stderr: bool) -> LogLevel {
    parsed(message).unwrap_or(if stderr {
        LogLevel::Error
    } else {
        LogLevel::Info
    })
}

fn parsed(m: &str) -> Option<LogLevel> {
    let t = m.trim_start();
    if t.starts_with('{') {
        if let Some(l) = from_json(t) {
            return Some(l);
        }
    }
    if let Some(l) = from_logfmt(t) {
        return Some(l);
    }
    for w in t.split_ascii_whitespace().take(WORDS) {
        let bracketed = ["[]", "<>", "()"].iter().find_map(|p| {
            let mut c = p.chars();
            let (open, close) = (c.next()?, c.next()?);
            let inner = w.strip_prefix(open)?;
            let inner = inner.strip_suffix(':').unwrap_or(inner);
            inner.strip_suffix(close)
        });
        if let Some(inner) = bracketed {
            if let Some(l) = LogLevel::from_word(inner) {
                return Some(l);
            }
            continue;
        }
        // A bare word counts only in capitals (`ERROR`, `WARN:`), so
        // "error handling ready" is not an error.
        let bare = w.trim_end_matches([':', ',', '|', ']']);
        if bare.len() >= 3 && bare.bytes().all(|b| b.is_ascii_uppercase()) {
            if let Some(l) = LogLevel::from_word(bare) {
                return Some(l);
            }
        }
    }
    None
}

fn from_json(t: &str) -> Option<LogLevel> {
    let v: serde_json::Value = serde_json::from_str(t).ok()?;
    let o = v.as_object()?;
    for k in [
        "level",
        "lvl",
        "severity",
        "log.level",
        "levelname",
        "loglevel",
    ] {
        match o.get(k) {
            Some(serde_json::Value::String(s)) => return LogLevel::from_word(s),
            // pino/bunyan: numeric levels.
            Some(serde_json::Value::Number(n)) => {
                return n.as_u64().map(|n| match n {
                    0..=20 => LogLevel::Debug,
                    21..=30 => LogLevel::Info,
                    31..=40 => LogLevel::Warn,
                    _ => LogLevel::Error,
                })
            }
            _ => {}
        }
    }
    o.get("log")
        .and_then(|l| l.get("level"))
        .and_then(|l| l.as_str())
        .and_then(LogLevel::from_word)
}

fn from_logfmt(t: &str) -> Option<LogLevel> {
    for w in t.split_ascii_whitespace() {
        for k in ["level=", "lvl=", "severity="] {
            if let Some(v) = w.strip_prefix(k) {
                return LogLevel::from_word(v.trim_matches('"'));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use LogLevel::*;

    #[test]
    fn common_formats() {
        let cases = [
            (r#"{"level":"warn","msg":"slow"}"#, false, Warn),
            (r#"{"severity":"ERROR","message":"x"}"#, false, Error),
            (r#"{"level":30,"msg":"pino"}"#, true, Info),
            (r#"{"log":{"level":"debug"}}"#, false, Debug),
            ("time=2024-01-01 level=debug msg=hi", false, Debug),
            ("[INFO] Server started", true, Info),
            ("2024-01-20T10:00:00Z [warn] disk", false, Warn),
            (
                "2024-01-20 10:00:00,123 ERROR django.request: boom",
                false,
                Error,
            ),
            ("WARNING: deprecated", false, Warn),
            ("<debug> tick", false, Debug),
            ("I/O error handling ready", false, Info),
            ("error handling ready", true, Error),
            ("plain line", false, Info),
            ("plain line", true, Error),
            ("", false, Info),
        ];
        for (line, stderr, want) in cases {
            assert_eq!(classify(line, stderr), want, "{line:?}");
        }
    }
}
