//! Instants on the command line and in output: microseconds since the epoch, UTC.

use chrono::DateTime;

use crate::error::{JobsError, Result};
use crate::timestamp::TimestampFormat;

/// Parses `2023-01-31`, `2023-01-31T06:00`, `2023-01-31 06:00:00` (UTC) or RFC 3339 with an offset.
pub fn parse_instant(text: &str) -> Result<i64> {
    TimestampFormat::Iso.parse_str(text).ok_or_else(|| {
        JobsError::InvalidInput(format!(
            "'{text}' is not a time; expected a date or date-time such as 2023-01-31 or 2023-01-31T06:00:00Z (UTC unless an offset is given)"
        ))
    })
}

/// Formats microseconds as RFC 3339 in UTC, seconds precision unless there is a fraction.
pub fn format_instant(micros: i64) -> String {
    match DateTime::from_timestamp_micros(micros) {
        Some(dt) if micros % 1_000_000 == 0 => dt.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Some(dt) => dt.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        None => format!("{micros}µs"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_trip() {
        let t = parse_instant("2022-12-10T06:00:00Z").unwrap();
        assert_eq!(format_instant(t), "2022-12-10T06:00:00Z");
        assert_eq!(parse_instant("2022-12-10").unwrap(), t - 6 * 3_600_000_000);
        assert!(parse_instant("yesterday").is_err());
    }
}
