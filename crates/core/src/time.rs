//! Times are stored as microseconds since the Unix epoch (a BIGINT on every
//! backend, exact to compare and sort) and shown as RFC 3339 UTC.

use chrono::{DateTime, NaiveDate, SecondsFormat, TimeZone, Utc};

pub type Timestamp = DateTime<Utc>;

pub fn now() -> Timestamp {
    Utc::now()
}

pub fn to_micros(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

pub fn from_micros(us: i64) -> Timestamp {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

pub fn rfc3339(t: Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parse an RFC 3339 time (any offset) into UTC.
pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// How a time given in a filter should be read when it is a bare date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateEdge {
    /// `2024-01-01` means 2024-01-01T00:00:00Z.
    Start,
    /// `2024-12-31` means the end of that day (used by `lte`/`gt`, so that
    /// `lte=2024-12-31` includes the whole last day).
    End,
}

/// Parse an RFC 3339 time or a `YYYY-MM-DD` date into microseconds.
pub fn parse_filter_time(s: &str, edge: DateEdge) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc).timestamp_micros());
    }
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    let start = d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros();
    Some(match edge {
        DateEdge::Start => start,
        DateEdge::End => start + 86_400_000_000 - 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times() {
        let s = parse_filter_time("2024-01-01", DateEdge::Start).unwrap();
        let e = parse_filter_time("2024-01-01", DateEdge::End).unwrap();
        assert_eq!(e - s, 86_400_000_000 - 1);
        assert_eq!(
            parse_filter_time("2024-01-01T00:00:00Z", DateEdge::End),
            Some(s)
        );
        assert_eq!(parse_filter_time("yesterday", DateEdge::Start), None);
        assert_eq!(rfc3339(from_micros(s)), "2024-01-01T00:00:00.000Z");
    }
}
