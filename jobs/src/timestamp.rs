//! Turning a source's timestamp column into instants.
//!
//! Almanac's timestamps are `Timestamp(Microsecond, "UTC")`, the unit Delta Lake and Spark use.
//! Sources may hold any Arrow timestamp (no time zone means UTC), a date, an ISO-8601 or
//! patterned string, or an integer epoch. Conversion runs inside the engine as the scalar
//! function [`ParseTimestamp`] (`almanac_timestamp(value, format)`); a value that cannot be
//! read fails the query instead of becoming a null, and [`TimestampCheck`]
//! (`almanac_timestamp_ok`) lets the caller then count the bad rows for the error message.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Date64Type, Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use datafusion::common::{DataFusionError, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// Prefix of the execution error raised for an unreadable timestamp; callers recognise the
/// failure by it even after Ballista has turned the error into text.
pub const PARSE_ERROR_MARKER: &str = "almanac_timestamp: cannot read";

/// The Arrow type of every timestamp Almanac produces.
pub fn canonical_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// How a string or integer timestamp is written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TimestampFormat {
    /// ISO-8601 / RFC 3339 strings (with `T` or a space, optional fraction and offset, or a
    /// date alone); integers are epoch seconds.
    Iso,
    /// A chrono strftime pattern; strings without an offset are UTC.
    Pattern(String),
    /// Integers counting this unit since 1970-01-01T00:00:00Z.
    Epoch(TimeUnit),
}

impl TimestampFormat {
    /// Reads a spec's `timestamp_column.format`. Java-style patterns (`yyyy-MM-dd HH:mm:ss`, as
    /// the managed feature store's Spark jobs use) are translated to chrono's.
    pub fn parse(format: Option<&str>) -> Result<TimestampFormat, String> {
        let Some(format) = format.map(str::trim).filter(|f| !f.is_empty()) else {
            return Ok(TimestampFormat::Iso);
        };
        let epoch = match format {
            "iso" | "iso8601" => return Ok(TimestampFormat::Iso),
            "epoch" | "epoch_s" => Some(TimeUnit::Second),
            "epoch_ms" => Some(TimeUnit::Millisecond),
            "epoch_us" => Some(TimeUnit::Microsecond),
            "epoch_ns" => Some(TimeUnit::Nanosecond),
            _ => None,
        };
        if let Some(unit) = epoch {
            return Ok(TimestampFormat::Epoch(unit));
        }
        let pattern = if format.contains('%') {
            format.to_string()
        } else {
            java_to_chrono(format)
        };
        let items = chrono::format::StrftimeItems::new(&pattern);
        if items
            .clone()
            .any(|i| matches!(i, chrono::format::Item::Error))
            || !pattern.contains('%')
        {
            return Err(format!(
                "'{format}' is not a timestamp format; expected a pattern such as '%Y-%m-%d %H:%M:%S' \
                 or 'yyyy-MM-dd HH:mm:ss', or one of iso, epoch_s, epoch_ms, epoch_us, epoch_ns"
            ));
        }
        Ok(TimestampFormat::Pattern(pattern))
    }

    /// The text stored in the spec and passed to the engine function.
    pub fn to_arg(&self) -> String {
        match self {
            TimestampFormat::Iso => "iso".to_string(),
            TimestampFormat::Pattern(p) => p.clone(),
            TimestampFormat::Epoch(TimeUnit::Second) => "epoch_s".to_string(),
            TimestampFormat::Epoch(TimeUnit::Millisecond) => "epoch_ms".to_string(),
            TimestampFormat::Epoch(TimeUnit::Microsecond) => "epoch_us".to_string(),
            TimestampFormat::Epoch(TimeUnit::Nanosecond) => "epoch_ns".to_string(),
        }
    }

    /// What a reader of an error message should have written.
    pub fn describe(&self, source_type: &DataType) -> String {
        match (self, source_type) {
            (_, DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64) => {
                "a timestamp".to_string()
            }
            (TimestampFormat::Iso, t) if t.is_integer() => "epoch seconds".to_string(),
            (TimestampFormat::Iso, _) => {
                "an ISO-8601 timestamp (e.g. 2023-01-31T13:45:00Z)".to_string()
            }
            (TimestampFormat::Pattern(p), _) => format!("a timestamp in the format '{p}'"),
            (TimestampFormat::Epoch(_), _) => format!("an integer {}", self.to_arg()),
        }
    }

    /// Parses one string to microseconds since the epoch.
    pub fn parse_str(&self, s: &str) -> Option<i64> {
        let s = s.trim();
        match self {
            TimestampFormat::Iso | TimestampFormat::Epoch(_) => parse_iso(s),
            TimestampFormat::Pattern(p) => {
                if let Ok(dt) = DateTime::parse_from_str(s, p) {
                    return Some(dt.timestamp_micros());
                }
                if let Ok(dt) = NaiveDateTime::parse_from_str(s, p) {
                    return Some(dt.and_utc().timestamp_micros());
                }
                NaiveDate::parse_from_str(s, p).ok().map(|d| {
                    d.and_hms_opt(0, 0, 0)
                        .unwrap_or_default()
                        .and_utc()
                        .timestamp_micros()
                })
            }
        }
    }

    fn epoch_factor(&self) -> (i64, i64) {
        // (multiply, divide) to reach microseconds
        match self {
            TimestampFormat::Epoch(TimeUnit::Millisecond) => (1_000, 1),
            TimestampFormat::Epoch(TimeUnit::Microsecond) => (1, 1),
            TimestampFormat::Epoch(TimeUnit::Nanosecond) => (1, 1_000),
            _ => (1_000_000, 1),
        }
    }
}

fn java_to_chrono(java: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = java.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // quoted literal
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                out.push(chars[i]);
                i += 1;
            }
            i += 1;
            continue;
        }
        let mut run = 1;
        while i + run < chars.len() && chars[i + run] == c {
            run += 1;
        }
        let token = match (c, run) {
            ('y', 4) | ('u', 4) => "%Y",
            ('y', 2) => "%y",
            ('M', 2) => "%m",
            ('M', 3) => "%b",
            ('d', 2) => "%d",
            ('H', 2) => "%H",
            ('h', 2) => "%I",
            ('m', 2) => "%M",
            ('s', 2) => "%S",
            ('S', 1..=9) => "%.f",
            ('a', 1) => "%p",
            ('X', 3) | ('x', 3) => "%:z",
            ('X', _) | ('Z', _) | ('x', _) => "%z",
            _ if c.is_ascii_alphabetic() => {
                // An unknown letter makes the pattern unusable; keep it so validation fails.
                return String::new();
            }
            _ => {
                out.extend(std::iter::repeat_n(c, run));
                i += run;
                continue;
            }
        };
        // chrono's %.f consumes the separator itself
        if token == "%.f" && out.ends_with('.') {
            out.pop();
        }
        out.push_str(token);
        i += run;
    }
    out
}

fn parse_iso(s: &str) -> Option<i64> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.timestamp_micros());
    }
    for p in [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%#z",
        "%Y-%m-%dT%H:%M%:z",
    ] {
        if let Ok(dt) = DateTime::parse_from_str(s, p) {
            return Some(dt.timestamp_micros());
        }
    }
    let naive = s.strip_suffix('Z').unwrap_or(s);
    for p in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(naive, p) {
            return Some(dt.and_utc().timestamp_micros());
        }
    }
    NaiveDate::parse_from_str(naive, "%Y-%m-%d").ok().map(|d| {
        d.and_hms_opt(0, 0, 0)
            .unwrap_or_default()
            .and_utc()
            .timestamp_micros()
    })
}

/// Converts one array to microseconds; `None` entries are values that cannot be read (nulls
/// included). Errors only for column types that can never be timestamps.
fn convert(
    array: &dyn Array,
    format: &TimestampFormat,
) -> Result<Vec<Option<i64>>, DataFusionError> {
    let n = array.len();
    let valid = |i: usize| array.is_valid(i);
    let out: Vec<Option<i64>> = match array.data_type() {
        DataType::Timestamp(unit, _) => {
            let (mul, div) = match unit {
                TimeUnit::Second => (1_000_000, 1),
                TimeUnit::Millisecond => (1_000, 1),
                TimeUnit::Microsecond => (1, 1),
                TimeUnit::Nanosecond => (1, 1_000),
            };
            let values: Vec<i64> = match unit {
                TimeUnit::Second => array
                    .as_primitive::<TimestampSecondType>()
                    .values()
                    .to_vec(),
                TimeUnit::Millisecond => array
                    .as_primitive::<TimestampMillisecondType>()
                    .values()
                    .to_vec(),
                TimeUnit::Microsecond => array
                    .as_primitive::<TimestampMicrosecondType>()
                    .values()
                    .to_vec(),
                TimeUnit::Nanosecond => array
                    .as_primitive::<TimestampNanosecondType>()
                    .values()
                    .to_vec(),
            };
            (0..n)
                .map(|i| {
                    valid(i)
                        .then(|| values[i].checked_mul(mul).map(|v| v.div_euclid(div)))
                        .flatten()
                })
                .collect()
        }
        DataType::Date32 => {
            let a = array.as_primitive::<Date32Type>();
            (0..n)
                .map(|i| valid(i).then(|| i64::from(a.value(i)) * 86_400_000_000))
                .collect()
        }
        DataType::Date64 => {
            let a = array.as_primitive::<Date64Type>();
            (0..n)
                .map(|i| valid(i).then(|| a.value(i) * 1_000))
                .collect()
        }
        DataType::Int64 | DataType::Int32 => {
            let (mul, div) = format.epoch_factor();
            let values: Vec<i64> = if array.data_type() == &DataType::Int64 {
                array.as_primitive::<Int64Type>().values().to_vec()
            } else {
                array
                    .as_primitive::<Int32Type>()
                    .values()
                    .iter()
                    .map(|v| i64::from(*v))
                    .collect()
            };
            (0..n)
                .map(|i| {
                    valid(i)
                        .then(|| values[i].checked_mul(mul).map(|v| v.div_euclid(div)))
                        .flatten()
                })
                .collect()
        }
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            (0..n)
                .map(|i| valid(i).then(|| format.parse_str(a.value(i))).flatten())
                .collect()
        }
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            (0..n)
                .map(|i| valid(i).then(|| format.parse_str(a.value(i))).flatten())
                .collect()
        }
        DataType::Utf8View => {
            let a = array.as_string_view();
            (0..n)
                .map(|i| valid(i).then(|| format.parse_str(a.value(i))).flatten())
                .collect()
        }
        other => {
            return exec_err!("almanac_timestamp: a column of type {other} cannot hold timestamps");
        }
    };
    Ok(out)
}

/// Whether a column type can be read as a timestamp at all.
pub fn is_timestamp_capable(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Timestamp(_, _)
            | DataType::Date32
            | DataType::Date64
            | DataType::Int64
            | DataType::Int32
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
    )
}

fn format_arg(args: &ScalarFunctionArgs, name: &str) -> Result<TimestampFormat, DataFusionError> {
    match args.args.get(1) {
        Some(ColumnarValue::Scalar(ScalarValue::Utf8(Some(f)))) => {
            TimestampFormat::parse(Some(f)).map_err(DataFusionError::Execution)
        }
        _ => exec_err!("{name}: the second argument must be a literal format string"),
    }
}

fn display_value(array: &dyn Array, i: usize) -> String {
    if array.is_null(i) {
        return "null".to_string();
    }
    datafusion::arrow::util::display::array_value_to_string(array, i)
        .unwrap_or_else(|_| "?".to_string())
}

/// `almanac_timestamp(value, format) -> Timestamp(µs, UTC)`; fails on nulls and unreadable values.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ParseTimestamp {
    signature: Signature,
}

impl ParseTimestamp {
    pub const NAME: &'static str = "almanac_timestamp";

    pub fn udf() -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::from(ParseTimestamp {
            signature: Signature::any(2, Volatility::Immutable),
        }))
    }
}

impl ScalarUDFImpl for ParseTimestamp {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        if !is_timestamp_capable(&arg_types[0]) {
            return plan_err!(
                "{}: a column of type {} cannot hold timestamps",
                Self::NAME,
                arg_types[0]
            );
        }
        Ok(canonical_type())
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let format = format_arg(&args, Self::NAME)?;
        let array = args.args[0].to_array(args.number_rows)?;
        let values = convert(array.as_ref(), &format)?;
        let mut builder = TimestampMicrosecondBuilder::with_capacity(values.len());
        for (i, v) in values.iter().enumerate() {
            match v {
                Some(v) => builder.append_value(*v),
                None => {
                    return exec_err!(
                        "{PARSE_ERROR_MARKER} '{}' as {}",
                        display_value(array.as_ref(), i),
                        format.describe(array.data_type())
                    );
                }
            }
        }
        let out: TimestampMicrosecondArray = builder.finish().with_timezone("UTC");
        Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
    }
}

/// `almanac_timestamp_ok(value, format) -> bool`: whether `almanac_timestamp` would accept it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TimestampCheck {
    signature: Signature,
}

impl TimestampCheck {
    pub const NAME: &'static str = "almanac_timestamp_ok";

    pub fn udf() -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::from(TimestampCheck {
            signature: Signature::any(2, Volatility::Immutable),
        }))
    }
}

impl ScalarUDFImpl for TimestampCheck {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let format = format_arg(&args, Self::NAME)?;
        let array = args.args[0].to_array(args.number_rows)?;
        let values = convert(array.as_ref(), &format)?;
        let out: BooleanArray = values.iter().map(|v| Some(v.is_some())).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros()
    }

    #[test]
    fn iso_strings_in_their_common_shapes() {
        let f = TimestampFormat::Iso;
        let expected = micros("2022-12-10T06:00:00Z");
        for s in [
            "2022-12-10T06:00:00Z",
            "2022-12-10 06:00:00",
            "2022-12-10T06:00",
            "2022-12-10T07:00:00+01:00",
            "2022-12-10T06:00:00.000",
        ] {
            assert_eq!(f.parse_str(s), Some(expected), "{s}");
        }
        assert_eq!(
            f.parse_str("2022-12-10"),
            Some(micros("2022-12-10T00:00:00Z"))
        );
        assert_eq!(f.parse_str("12/10/2022"), None);
        assert_eq!(f.parse_str(""), None);
    }

    #[test]
    fn patterns_in_chrono_and_java_style() {
        let chrono = TimestampFormat::parse(Some("%d/%m/%Y %H:%M")).unwrap();
        assert_eq!(
            chrono.parse_str("10/12/2022 06:00"),
            Some(micros("2022-12-10T06:00:00Z"))
        );
        let java = TimestampFormat::parse(Some("yyyy-MM-dd HH:mm:ss.SSS")).unwrap();
        assert_eq!(
            java,
            TimestampFormat::Pattern("%Y-%m-%d %H:%M:%S%.f".into())
        );
        assert_eq!(
            java.parse_str("2022-12-10 06:00:00.250"),
            Some(micros("2022-12-10T06:00:00.25Z"))
        );
        let date_only = TimestampFormat::parse(Some("yyyyMMdd")).unwrap();
        assert_eq!(
            date_only.parse_str("20221210"),
            Some(micros("2022-12-10T00:00:00Z"))
        );
        for bad in ["nonsense", "%Q", "yyyy-MM-dd QQ"] {
            assert!(TimestampFormat::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn arrays_of_every_supported_type() {
        use datafusion::arrow::array::{
            Date32Array, Int64Array, StringArray, TimestampNanosecondArray,
        };
        let t = micros("2022-12-10T06:00:00Z");
        let ns = TimestampNanosecondArray::from(vec![Some(t * 1000 + 999), None]);
        assert_eq!(
            convert(&ns, &TimestampFormat::Iso).unwrap(),
            vec![Some(t), None]
        );
        let secs = Int64Array::from(vec![t / 1_000_000]);
        assert_eq!(
            convert(&secs, &TimestampFormat::Iso).unwrap(),
            vec![Some(t)]
        );
        let ms = Int64Array::from(vec![t / 1_000]);
        assert_eq!(
            convert(&ms, &TimestampFormat::Epoch(TimeUnit::Millisecond)).unwrap(),
            vec![Some(t)]
        );
        let days = Date32Array::from(vec![19336]);
        assert_eq!(
            convert(&days, &TimestampFormat::Iso).unwrap(),
            vec![Some(micros("2022-12-10T00:00:00Z"))]
        );
        let s = StringArray::from(vec![Some("2022-12-10T06:00:00Z"), Some("bad"), None]);
        assert_eq!(
            convert(&s, &TimestampFormat::Iso).unwrap(),
            vec![Some(t), None, None]
        );
    }
}
