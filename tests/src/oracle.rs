//! The window-aggregation semantics of DESIGN.md §4, computed the obvious way.

use std::collections::BTreeMap;

/// One source row as the oracle sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRow {
    pub keys: Vec<Option<String>>,
    /// Microseconds since the epoch.
    pub ts: i64,
    pub value: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    Sum,
    Avg,
    Min,
    Max,
    Count,
    Latest,
}

/// Output key: index values and timestamp.
pub type RowKey = (Vec<Option<String>>, i64);

/// Features of a feature window `[start, end)` read with `lookback` of history: one row per
/// distinct (key, timestamp) in the window, each aggregate over the key's rows in
/// `[t − window, t]` among the rows read (`[start − lookback, end)`).
pub fn window_features(
    rows: &[SourceRow],
    aggs: &[(Agg, i64)],
    start: i64,
    end: i64,
    lookback: i64,
) -> BTreeMap<RowKey, Vec<Option<f64>>> {
    let read: Vec<&SourceRow> = rows
        .iter()
        .filter(|r| r.ts >= start - lookback && r.ts < end)
        .collect();
    let mut out = BTreeMap::new();
    for r in &read {
        if r.ts < start {
            continue;
        }
        let key: RowKey = (r.keys.clone(), r.ts);
        if out.contains_key(&key) {
            continue;
        }
        let values = aggs
            .iter()
            .map(|(agg, window)| {
                let in_window: Vec<&&SourceRow> = read
                    .iter()
                    .filter(|o| o.keys == r.keys && o.ts >= r.ts - window && o.ts <= r.ts)
                    .collect();
                aggregate(*agg, &in_window)
            })
            .collect();
        out.insert(key, values);
    }
    out
}

fn aggregate(agg: Agg, rows: &[&&SourceRow]) -> Option<f64> {
    let values: Vec<f64> = rows.iter().filter_map(|r| r.value).collect();
    match agg {
        Agg::Count => Some(rows.len() as f64),
        Agg::Sum => (!values.is_empty()).then(|| values.iter().sum()),
        Agg::Avg => (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64),
        Agg::Min => values.iter().copied().reduce(f64::min),
        Agg::Max => values.iter().copied().reduce(f64::max),
        Agg::Latest => {
            // The non-null value with the greatest timestamp; ties by the greatest value.
            rows.iter()
                .filter_map(|r| r.value.map(|v| (r.ts, v)))
                .reduce(|a, b| if (b.0, b.1) > (a.0, a.1) { b } else { a })
                .map(|(_, v)| v)
        }
    }
}

/// Compares two result maps, allowing for float summation order.
pub fn assert_same(
    actual: &BTreeMap<RowKey, Vec<Option<f64>>>,
    expected: &BTreeMap<RowKey, Vec<Option<f64>>>,
) {
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !actual.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = actual
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "rows differ: missing {missing:?}, unexpected {extra:?}"
    );
    for (k, e) in expected {
        let a = &actual[k];
        assert_eq!(a.len(), e.len());
        for (i, (av, ev)) in a.iter().zip(e).enumerate() {
            let same = match (av, ev) {
                (None, None) => true,
                (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
                _ => false,
            };
            assert!(same, "row {k:?} feature {i}: engine {av:?}, oracle {ev:?}");
        }
    }
}
