//! What a name may be: display names (of tokens, organizations, service
//! accounts, users) and host names.

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Why `name` is not a usable display name, or `None` when it is: 1 to
/// `max` characters after trimming, with no control characters (Cc), no
/// format characters (Cf: zero-width characters, the bidi embeddings,
/// overrides and isolates such as U+202E that make text read backwards),
/// and no line or paragraph separators. Those either do not show or change
/// how the text around them shows, which is how a name impersonates
/// another in a list or an audit log.
pub fn display_name_problem(name: &str, max: usize) -> Option<(&'static str, String)> {
    let n = name.trim();
    if n.is_empty() {
        return Some(("required", "must not be empty".into()));
    }
    if n.chars().count() > max {
        return Some(("too_long", format!("must be at most {max} characters")));
    }
    if let Some(c) = n.chars().find(|c| invisible_or_reordering(*c)) {
        return Some((
            "invalid_value",
            format!(
                "must not contain control, invisible or text-direction characters (found U+{:04X})",
                u32::from(c)
            ),
        ));
    }
    None
}

fn invisible_or_reordering(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
            | GeneralCategory::Surrogate
    )
}

/// Why `host` is not a host name (RFC 1123: dot-separated labels of 1 to 63
/// lowercase letters, digits and `-`, not starting or ending with `-`; at
/// most 253 characters), or `None` when it is.
pub fn hostname_problem(host: &str) -> Option<String> {
    if host.is_empty() || host.len() > 253 {
        return Some("must be 1 to 253 characters".into());
    }
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Some("each dot-separated label must be 1 to 63 characters".into());
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Some(format!(
                "label '{label}' may hold only lowercase letters a-z, digits and '-' (RFC 1123)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(format!("label '{label}' must not start or end with '-'"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names() {
        assert_eq!(display_name_problem("Acme Corp", 100), None);
        assert_eq!(display_name_problem("Müller & Söhne 🚀", 100), None);
        assert_eq!(display_name_problem("日本語の名前", 100), None);
        for bad in [
            "ci\u{202E}txt.exe",
            "zero\u{200B}width",
            "bom\u{FEFF}",
            "iso\u{2067}late",
            "tab\there",
            "line\u{2028}sep",
            "nul\0",
        ] {
            let p = display_name_problem(bad, 100);
            assert_eq!(p.as_ref().map(|p| p.0), Some("invalid_value"), "{bad:?}");
        }
        assert_eq!(display_name_problem("  ", 100).unwrap().0, "required");
        assert_eq!(
            display_name_problem(&"x".repeat(101), 100).unwrap().0,
            "too_long"
        );
    }

    #[test]
    fn host_names() {
        for ok in ["web-1", "a", "node1.example.com", "1a", &"a".repeat(63)] {
            assert_eq!(hostname_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "héllo",
            "emoji🚀",
            "Upper",
            "-lead",
            "trail-",
            "a..b",
            "under_score",
            "sp ace",
            &"a".repeat(64),
            &format!("{}.b", "a.".repeat(130)),
        ] {
            assert!(hostname_problem(bad).is_some(), "{bad}");
        }
    }
}
