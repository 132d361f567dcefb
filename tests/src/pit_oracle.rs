//! The point-in-time join of DESIGN.md §4, computed the obvious way: for every observation,
//! look at every feature row. Shares no code with the engine's as-of join.

/// A feature value; `None` is null and orders lowest, as the tie rule says.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Value {
    Int(Option<i64>),
    Str(Option<String>),
}

/// One row of a feature set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureRow {
    pub keys: Vec<Option<String>>,
    /// Microseconds since the epoch.
    pub ts: i64,
    /// Creation time; compared before values on timestamp ties. `None` when the set has none.
    pub created: Option<i64>,
    /// In the feature set's feature order.
    pub values: Vec<Value>,
}

/// The feature row each observation gets: the same (all non-null) key, the latest timestamp
/// in `[t − lookback, t − delay]`, ties broken by creation time and then by values in order.
/// Returns indexes into `rows`.
pub fn point_in_time(
    observations: &[(Vec<Option<String>>, i64)],
    rows: &[FeatureRow],
    lookback: Option<i64>,
    delay: i64,
) -> Vec<Option<usize>> {
    observations
        .iter()
        .map(|(keys, t)| {
            if keys.iter().any(Option::is_none) {
                return None;
            }
            let mut best: Option<usize> = None;
            for (i, row) in rows.iter().enumerate() {
                let in_window = row.ts <= t - delay && lookback.is_none_or(|l| row.ts >= t - l);
                if row.keys != *keys || !in_window {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some(b) => {
                        let b = &rows[b];
                        (row.ts, row.created, &row.values) > (b.ts, b.created, &b.values)
                    }
                };
                if better {
                    best = Some(i);
                }
            }
            best
        })
        .collect()
}
