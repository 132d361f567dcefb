//! The files users write: feature set specs, entities, feature set assets and feature retrieval
//! specs (DESIGN.md §3).
//!
//! Field names follow the managed feature store so existing files load. Every reader collects
//! all problems in a file before failing ([`SpecErrors`]); every type serializes back to the same
//! YAML shape, so writing a spec and reading it back gives the same value.

mod asset;
mod entity;
mod feature_set;
mod reader;
mod retrieval;

use std::fmt;
use std::path::{Path, PathBuf};

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use serde::{Deserialize, Serialize};

pub use asset::{FeatureSetAsset, Frequency, MaterializationSettings, RecurrenceSchedule, Stage};
pub use entity::EntitySpec;
pub use feature_set::{
    Aggregation, ColumnSpec, FeatureSetSpec, FeatureSpec, LoadedSpec, SPEC_FILE_NAMES, SourceKind,
    SourceSpec, TimestampColumn, Transformation, WindowAggregation,
};
pub use retrieval::{
    FeatureRetrievalSpec, FeatureStoreEntry, RETRIEVAL_SPEC_FILE_NAME, RetrievalFeature,
};

use crate::error::{JobsError, Result};
use reader::Reader;

/// One problem in a spec file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Where in the file, e.g. `features[2].type`; empty for the whole document.
    pub path: String,
    pub message: String,
}

/// Every problem found in one spec file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors {
    pub file: PathBuf,
    /// What kind of file it was read as, e.g. "feature set spec".
    pub kind: &'static str,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{} is not a valid {} ({n} problem{}):",
            self.file.display(),
            self.kind,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            if e.path.is_empty() {
                write!(f, "\n  - {}", e.message)?;
            } else {
                write!(f, "\n  - {}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

/// A time offset as the managed feature store writes it: `{days, hours, minutes}`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Offset {
    pub days: u64,
    pub hours: u64,
    pub minutes: u64,
}

impl Offset {
    pub const ZERO: Offset = Offset {
        days: 0,
        hours: 0,
        minutes: 0,
    };

    pub fn days(days: u64) -> Self {
        Offset {
            days,
            ..Offset::ZERO
        }
    }

    pub fn minutes(minutes: u64) -> Self {
        Offset {
            minutes,
            ..Offset::ZERO
        }
    }

    /// Total length in minutes, `None` on overflow.
    pub fn total_minutes(&self) -> Option<u64> {
        self.days
            .checked_mul(24 * 60)?
            .checked_add(self.hours.checked_mul(60)?)?
            .checked_add(self.minutes)
    }

    /// Length in microseconds (the unit of Almanac's timestamps).
    pub fn micros(&self) -> i64 {
        // Readers reject offsets whose minutes overflow; a u64 of minutes fits i64 micros only
        // below ~17.5 million years, far beyond any valid timestamp range, so saturate.
        let minutes = self.total_minutes().unwrap_or(u64::MAX);
        i64::try_from(minutes)
            .unwrap_or(i64::MAX)
            .saturating_mul(60_000_000)
    }

    pub fn is_zero(&self) -> bool {
        self.total_minutes() == Some(0)
    }

    /// Parses the command-line form: `7d`, `20m`, `1d12h`, `90m`, `0`.
    pub fn parse_compact(text: &str) -> Result<Offset> {
        let bad = || {
            JobsError::InvalidInput(format!(
                "'{text}' is not a duration; expected a number of days, hours and minutes such as 7d, 20m or 1d12h"
            ))
        };
        let text = text.trim();
        if text == "0" {
            return Ok(Offset::ZERO);
        }
        let mut offset = Offset::ZERO;
        let mut digits = String::new();
        for c in text.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let n: u64 = digits.parse().map_err(|_| bad())?;
            digits.clear();
            match c {
                'd' => offset.days += n,
                'h' => offset.hours += n,
                'm' => offset.minutes += n,
                _ => return Err(bad()),
            }
        }
        if !digits.is_empty() || text.is_empty() || offset.total_minutes().is_none() {
            return Err(bad());
        }
        Ok(offset)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut wrote = false;
        for (n, unit) in [(self.days, "d"), (self.hours, "h"), (self.minutes, "m")] {
            if n > 0 {
                write!(f, "{n}{unit}")?;
                wrote = true;
            }
        }
        if !wrote {
            write!(f, "0")?;
        }
        Ok(())
    }
}

/// Column types a spec can declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureType {
    String,
    Integer,
    Long,
    Float,
    Double,
    Binary,
    Datetime,
    Boolean,
}

impl FeatureType {
    pub const ALL: [(&'static str, FeatureType); 8] = [
        ("string", FeatureType::String),
        ("integer", FeatureType::Integer),
        ("long", FeatureType::Long),
        ("float", FeatureType::Float),
        ("double", FeatureType::Double),
        ("binary", FeatureType::Binary),
        ("datetime", FeatureType::Datetime),
        ("boolean", FeatureType::Boolean),
    ];

    pub fn name(&self) -> &'static str {
        FeatureType::ALL
            .iter()
            .find(|(_, t)| t == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    /// The Arrow type Almanac writes for this declared type.
    pub fn arrow_type(&self) -> DataType {
        match self {
            FeatureType::String => DataType::Utf8,
            FeatureType::Integer => DataType::Int32,
            FeatureType::Long => DataType::Int64,
            FeatureType::Float => DataType::Float32,
            FeatureType::Double => DataType::Float64,
            FeatureType::Binary => DataType::Binary,
            FeatureType::Datetime => crate::timestamp::canonical_type(),
            FeatureType::Boolean => DataType::Boolean,
        }
    }

    /// Whether a produced Arrow type satisfies this declared type. String and binary accept
    /// every Arrow encoding of them, and datetime any timestamp unit; numbers must match
    /// exactly, so a declared `integer` over a 64-bit column is reported rather than truncated.
    pub fn accepts(&self, produced: &DataType) -> bool {
        match self {
            FeatureType::String => matches!(
                produced,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ),
            FeatureType::Binary => {
                matches!(
                    produced,
                    DataType::Binary | DataType::LargeBinary | DataType::BinaryView
                )
            }
            FeatureType::Datetime => matches!(produced, DataType::Timestamp(_, _)),
            other => &other.arrow_type() == produced,
        }
    }

    /// The declared type to suggest for a produced Arrow type, if there is one.
    pub fn for_arrow(data_type: &DataType) -> Option<FeatureType> {
        FeatureType::ALL
            .iter()
            .map(|(_, t)| *t)
            .find(|t| t.accepts(data_type))
    }
}

impl fmt::Display for FeatureType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A readable name for an Arrow type in error messages.
pub fn describe_arrow_type(data_type: &DataType) -> String {
    match FeatureType::for_arrow(data_type) {
        Some(t) => format!("{t} ({data_type})"),
        None => match data_type {
            DataType::Timestamp(TimeUnit::Microsecond, _) => "datetime".to_string(),
            other => other.to_string(),
        },
    }
}

/// Parses YAML text into a value, turning syntax errors into a located [`SpecErrors`].
fn parse_yaml(
    text: &str,
    file: &Path,
    kind: &'static str,
) -> Result<serde_yaml::Value, SpecErrors> {
    serde_yaml::from_str(text).map_err(|e| {
        let message = match e.location() {
            Some(loc) => format!(
                "malformed YAML at line {}, column {}: {e}",
                loc.line(),
                loc.column()
            ),
            None => format!("malformed YAML: {e}"),
        };
        SpecErrors {
            file: file.to_path_buf(),
            kind,
            errors: vec![FieldError {
                path: String::new(),
                message,
            }],
        }
    })
}

/// Reads a file to a string with an error naming it.
fn read_text(file: &Path) -> Result<String> {
    std::fs::read_to_string(file).map_err(|e| JobsError::io("cannot read", file, e))
}

/// Runs a reader over a document and turns collected errors into [`SpecErrors`].
fn finish<T>(
    reader: Reader,
    value: Option<T>,
    file: &Path,
    kind: &'static str,
) -> Result<T, SpecErrors> {
    match value {
        Some(v) if reader.errors.is_empty() => Ok(v),
        _ => {
            let mut errors = reader.errors;
            if errors.is_empty() {
                errors.push(FieldError {
                    path: String::new(),
                    message: "the document is empty".into(),
                });
            }
            Err(SpecErrors {
                file: file.to_path_buf(),
                kind,
                errors,
            })
        }
    }
}

/// Writes a file atomically: a temporary sibling renamed into place, so a failure never leaves
/// half a file behind.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| JobsError::io("cannot create folder", dir, e))?;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, contents).map_err(|e| JobsError::io("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        JobsError::io("cannot write", path, e)
    })
}

fn to_yaml<T: Serialize>(value: &T) -> String {
    // Serializing these plain structs cannot fail: they hold only strings, numbers, lists and maps.
    serde_yaml::to_string(value).expect("spec types serialize to YAML")
}

/// Reads a required list of `{name, type}` columns (index columns of specs and entities).
fn feature_set_columns(
    r: &mut Reader,
    map: &serde_yaml::Mapping,
    key: &str,
) -> Option<Vec<ColumnSpec>> {
    r.list(map, key, |r, v, p| {
        let m = r.mapping(v, p, &["name", "type"])?;
        let name = r.req_string(m, p, "name");
        let data_type = r
            .required(m, p, "type")
            .and_then(|v| r.choice(v, &reader::child(p, "type"), &FeatureType::ALL));
        Some(ColumnSpec {
            name: name?,
            data_type: data_type?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_and_print() {
        assert_eq!(Offset::parse_compact("7d").unwrap(), Offset::days(7));
        assert_eq!(
            Offset::parse_compact("1d12h5m").unwrap(),
            Offset {
                days: 1,
                hours: 12,
                minutes: 5
            }
        );
        assert_eq!(Offset::parse_compact("0").unwrap(), Offset::ZERO);
        assert_eq!(
            Offset {
                days: 1,
                hours: 0,
                minutes: 20
            }
            .to_string(),
            "1d20m"
        );
        for bad in ["", "7", "d", "-1d", "3w", "1.5d"] {
            assert!(
                Offset::parse_compact(bad).is_err(),
                "{bad} should not parse"
            );
        }
        assert_eq!(Offset::minutes(20).micros(), 20 * 60 * 1_000_000);
    }

    #[test]
    fn declared_types_accept_their_encodings() {
        assert!(FeatureType::String.accepts(&DataType::Utf8View));
        assert!(FeatureType::Datetime.accepts(&DataType::Timestamp(TimeUnit::Nanosecond, None)));
        assert!(!FeatureType::Integer.accepts(&DataType::Int64));
        assert_eq!(
            FeatureType::for_arrow(&DataType::Int64),
            Some(FeatureType::Long)
        );
        assert_eq!(FeatureType::for_arrow(&DataType::Decimal128(10, 2)), None);
    }
}
