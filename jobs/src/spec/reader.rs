//! A strict reader over parsed YAML that collects every problem it finds.
//!
//! `serde` stops at the first error; users fixing a spec want the whole list at once, each with
//! the field path (`features[2].type`) and what was expected. The typed structs in this module's
//! siblings are built through a [`Reader`], and serialized back with `serde` for writing.

use std::collections::BTreeMap;

use serde_yaml::{Mapping, Value};

use super::{FieldError, Offset};

/// Collects errors while walking a YAML document.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    pub(crate) errors: Vec<FieldError>,
}

/// Joins a parent path and a key the way errors display it.
pub(crate) fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing (null)".to_string(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string '{s}'"),
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

impl Reader {
    pub(crate) fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Reads `value` as a mapping whose keys are all in `allowed`; unknown keys are errors.
    pub(crate) fn mapping<'a>(
        &mut self,
        value: &'a Value,
        path: &str,
        allowed: &[&str],
    ) -> Option<&'a Mapping> {
        let Value::Mapping(map) = value else {
            self.error(
                path_or_root(path),
                format!("expected a mapping, found {}", describe(value)),
            );
            return None;
        };
        for key in map.keys() {
            match key.as_str() {
                Some(k) if allowed.contains(&k) => {}
                Some(k) => self.error(
                    child(path, k),
                    format!("unknown field; expected one of: {}", allowed.join(", ")),
                ),
                None => self.error(
                    path_or_root(path),
                    format!("keys must be strings, found {}", describe(key)),
                ),
            }
        }
        Some(map)
    }

    /// A required field.
    pub(crate) fn required<'a>(
        &mut self,
        map: &'a Mapping,
        path: &str,
        key: &str,
    ) -> Option<&'a Value> {
        match map.get(key) {
            None | Some(Value::Null) => {
                self.error(child(path, key), "required field is missing");
                None
            }
            Some(v) => Some(v),
        }
    }

    /// An optional field; an explicit `null` counts as absent.
    pub(crate) fn optional<'a>(&mut self, map: &'a Mapping, key: &str) -> Option<&'a Value> {
        match map.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    /// A non-empty string. Numbers are accepted where users commonly write them unquoted
    /// (`version: 1`), so the field keeps its textual form.
    pub(crate) fn string(&mut self, value: &Value, path: &str) -> Option<String> {
        let s = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => {
                self.error(
                    path,
                    format!("expected a string, found {}", describe(other)),
                );
                return None;
            }
        };
        if s.trim().is_empty() {
            self.error(path, "expected a non-empty string");
            return None;
        }
        Some(s)
    }

    pub(crate) fn req_string(&mut self, map: &Mapping, path: &str, key: &str) -> Option<String> {
        let v = self.required(map, path, key)?;
        self.string(v, &child(path, key))
    }

    pub(crate) fn opt_string(&mut self, map: &Mapping, path: &str, key: &str) -> Option<String> {
        let v = self.optional(map, key)?;
        self.string(v, &child(path, key))
    }

    pub(crate) fn boolean(&mut self, value: &Value, path: &str) -> Option<bool> {
        match value {
            Value::Bool(b) => Some(*b),
            other => {
                self.error(
                    path,
                    format!("expected true or false, found {}", describe(other)),
                );
                None
            }
        }
    }

    /// A non-negative integer.
    pub(crate) fn count(&mut self, value: &Value, path: &str) -> Option<u64> {
        match value {
            Value::Number(n) if n.as_u64().is_some() => n.as_u64(),
            Value::Number(n) if n.as_i64().is_some() => {
                self.error(
                    path,
                    format!("expected a non-negative whole number, found {n}"),
                );
                None
            }
            other => {
                self.error(
                    path,
                    format!(
                        "expected a non-negative whole number, found {}",
                        describe(other)
                    ),
                );
                None
            }
        }
    }

    pub(crate) fn sequence<'a>(&mut self, value: &'a Value, path: &str) -> Option<&'a Vec<Value>> {
        match value {
            Value::Sequence(s) => Some(s),
            other => {
                self.error(path, format!("expected a list, found {}", describe(other)));
                None
            }
        }
    }

    /// A `{days, hours, minutes}` offset, each a non-negative whole number.
    pub(crate) fn offset(&mut self, value: &Value, path: &str) -> Option<Offset> {
        let map = self.mapping(value, path, &["days", "hours", "minutes"])?;
        let before = self.errors.len();
        let mut part = |key: &str| -> u64 {
            map.get(key)
                .filter(|v| !v.is_null())
                .and_then(|v| self.count(v, &child(path, key)))
                .unwrap_or(0)
        };
        let offset = Offset {
            days: part("days"),
            hours: part("hours"),
            minutes: part("minutes"),
        };
        if self.errors.len() > before {
            return None;
        }
        if offset.total_minutes().is_none() {
            self.error(path, "offset is too large");
            return None;
        }
        Some(offset)
    }

    pub(crate) fn opt_offset(&mut self, map: &Mapping, path: &str, key: &str) -> Option<Offset> {
        let v = self.optional(map, key)?;
        self.offset(v, &child(path, key))
    }

    /// A mapping of string tags (`tags: {team: fraud}`).
    pub(crate) fn tags(
        &mut self,
        map: &Mapping,
        path: &str,
        key: &str,
    ) -> BTreeMap<String, String> {
        let mut tags = BTreeMap::new();
        let Some(value) = self.optional(map, key) else {
            return tags;
        };
        let path = child(path, key);
        let Value::Mapping(m) = value else {
            self.error(
                path,
                format!(
                    "expected a mapping of tag names to values, found {}",
                    describe(value)
                ),
            );
            return tags;
        };
        for (k, v) in m {
            let Some(k) = self.string(k, &path) else {
                continue;
            };
            let v = match v {
                Value::Null => String::new(),
                Value::Bool(b) => b.to_string(),
                other => self.string(other, &child(&path, &k)).unwrap_or_default(),
            };
            tags.insert(k, v);
        }
        tags
    }

    /// One of a fixed set of words; matching ignores case, as the managed feature store does.
    pub(crate) fn choice<T: Copy>(
        &mut self,
        value: &Value,
        path: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let s = self.string(value, path)?;
        if let Some((_, v)) = options
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&s))
        {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        self.error(
            path,
            format!("expected one of {}, found '{s}'", names.join(", ")),
        );
        None
    }

    /// A required, non-empty list field of the top-level mapping; every element is read (and
    /// its errors kept) even when an earlier one fails.
    pub(crate) fn list<T>(
        &mut self,
        map: &Mapping,
        key: &str,
        mut item: impl FnMut(&mut Reader, &Value, &str) -> Option<T>,
    ) -> Option<Vec<T>> {
        let seq = self
            .required(map, "", key)
            .and_then(|v| self.sequence(v, key))?;
        if seq.is_empty() {
            self.error(key, "expected at least one entry");
            return None;
        }
        let items: Vec<Option<T>> = seq
            .iter()
            .enumerate()
            .map(|(i, v)| item(self, v, &format!("{key}[{i}]")))
            .collect();
        items.into_iter().collect()
    }
}

fn path_or_root(path: &str) -> String {
    if path.is_empty() {
        "(top level)".to_string()
    } else {
        path.to_string()
    }
}
