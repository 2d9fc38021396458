//! What client commands print: aligned tables for people, the API's JSON
//! body for programs (`--output json`).

use std::io::Write;

use clap::ValueEnum;
use serde_json::Value;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The API's JSON body, pretty-printed.
    Json,
}

/// A cell: control characters (a newline in a name) would break the
/// columns, so they become spaces.
fn cell(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Columns separated by two spaces, each as wide as its widest cell; the
/// last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = std::iter::once(headers.iter().map(|h| cell(h)).collect())
        .chain(rows.iter().map(|r| r.iter().map(|c| cell(c)).collect()))
        .collect();
    let mut widths = vec![0usize; headers.len()];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(c);
            if i + 1 < r.len().min(widths.len()) {
                line.extend(std::iter::repeat_n(' ', w - c.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One `KEY  value` line per field, keys aligned.
pub fn fields(rows: &[(&str, String)]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(k, v)| vec![(*k).to_string(), v.clone()])
        .collect();
    let mut s = table(&["", ""], &rows);
    // Drop the (empty) header line.
    if let Some(i) = s.find('\n') {
        s.drain(..=i);
    }
    s
}

/// `-` for a missing value.
pub fn or_dash(v: Option<&str>) -> String {
    match v {
        Some(s) if !s.is_empty() => s.to_string(),
        Some(_) | None => "-".into(),
    }
}

/// A list as `a,b`, or `-` when empty.
/// A size as the API writes it (`23635208k`, `64g`) in human units
/// (`22.5 GiB`); what does not parse is shown as it is.
pub fn human_size(s: &str) -> String {
    let Some(bytes) = shellwego_core::units::parse_size(s) else {
        return s.to_string();
    };
    let mut value = bytes as f64;
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"] {
        if value < 1024.0 || unit == "TiB" {
            return if unit == "B" || value.fract() == 0.0 {
                format!("{value:.0} {unit}")
            } else {
                format!("{value:.1} {unit}")
            };
        }
        value /= 1024.0;
    }
    s.to_string()
}

pub fn list(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

/// The JSON body, pretty-printed, members in the API's order.
pub fn json(v: &Value) -> anyhow::Result<String> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    Ok(s)
}

/// Write to stdout. A closed pipe (`shellwego tokens list | head -1`) is
/// not an error.
pub fn emit(s: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A note for people (a hint, a warning): stderr, so stdout stays data.
pub fn note(s: &str) {
    eprintln!("{s}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size("23635208k"), "22.5 GiB");
        assert_eq!(human_size("64g"), "64 GiB");
        assert_eq!(human_size("512m"), "512 MiB");
        assert_eq!(human_size("100b"), "100 B");
        assert_eq!(human_size("-"), "-");
    }

    #[test]
    fn tables_align_columns_and_do_not_pad_the_last() {
        let t = table(
            &["ID", "NAME", "TYPE"],
            &[
                vec!["tok_1".into(), "ci".into(), "pat".into()],
                vec!["tok_22".into(), "déploiement\nx".into(), "-".into()],
            ],
        );
        assert_eq!(
            t,
            "ID      NAME           TYPE\n\
             tok_1   ci             pat\n\
             tok_22  déploiement x  -\n"
        );
        assert_eq!(table(&["A", "B"], &[]), "A  B\n");
    }

    #[test]
    fn fields_align_keys() {
        assert_eq!(
            fields(&[("ID", "usr_1".into()), ("EMAIL", "a@b".into())]),
            "ID     usr_1\nEMAIL  a@b\n"
        );
    }

    #[test]
    fn json_keeps_member_order() {
        let v: Value = serde_json::from_str(r#"{"z":1,"a":{"y":2,"b":3}}"#).unwrap();
        assert_eq!(
            json(&v).unwrap(),
            "{\n  \"z\": 1,\n  \"a\": {\n    \"y\": 2,\n    \"b\": 3\n  }\n}\n"
        );
    }
}
