//! An exact running sum of doubles: values can be added and taken away again in any order,
//! and the result is always the correctly rounded sum of the values in it.
//!
//! A sliding window that adds values at its head and subtracts them at its tail in plain
//! floating point carries rounding errors from values long gone, so a window's sum would
//! depend on where reading began (which rows a backfill task happened to read first). Kept
//! exactly, the sum depends only on the window's values: the same bytes whatever the task
//! split or partitioning. The representation is Shewchuk's: a short list of non-overlapping
//! partials whose exact sum is the running total (usually one to three of them).

/// The exact sum of the finite values added (minus those removed), with infinities and NaNs
/// counted apart so that removing one restores the finite sum.
#[derive(Debug, Clone, Default)]
pub(crate) struct ExactSum {
    partials: Vec<f64>,
    positive_infinities: i64,
    negative_infinities: i64,
    nans: i64,
}

impl ExactSum {
    pub(crate) fn add(&mut self, x: f64) {
        self.update(x, 1);
    }

    pub(crate) fn remove(&mut self, x: f64) {
        self.update(x, -1);
    }

    fn update(&mut self, x: f64, sign: i64) {
        if x.is_nan() {
            self.nans += sign;
        } else if x == f64::INFINITY {
            self.positive_infinities += sign;
        } else if x == f64::NEG_INFINITY {
            self.negative_infinities += sign;
        } else {
            self.add_finite(if sign > 0 { x } else { -x });
        }
    }

    /// Adds `x` to the partials, keeping them non-overlapping and increasing in magnitude.
    fn add_finite(&mut self, mut x: f64) {
        let mut kept = 0;
        for j in 0..self.partials.len() {
            let mut y = self.partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                self.partials[kept] = lo;
                kept += 1;
            }
            x = hi;
        }
        self.partials.truncate(kept);
        if x != 0.0 || self.partials.is_empty() {
            self.partials.push(x);
        }
    }

    /// The correctly rounded (half to even) sum.
    pub(crate) fn value(&self) -> f64 {
        if self.nans > 0 || (self.positive_infinities > 0 && self.negative_infinities > 0) {
            return f64::NAN;
        }
        if self.positive_infinities > 0 {
            return f64::INFINITY;
        }
        if self.negative_infinities > 0 {
            return f64::NEG_INFINITY;
        }
        let p = &self.partials;
        let Some(&top) = p.last() else {
            return 0.0;
        };
        let (mut n, mut hi, mut lo) = (p.len() - 1, top, 0.0);
        while n > 0 {
            let x = hi;
            n -= 1;
            let y = p[n];
            hi = x + y;
            lo = y - (hi - x);
            if lo != 0.0 {
                break;
            }
        }
        // hi + lo is exact; when lo is exactly half an ulp of hi, the partials below decide
        // which way the true sum rounds.
        if n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0)) {
            let y = lo * 2.0;
            let x = hi + y;
            if y == x - hi {
                hi = x;
            }
        }
        hi
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The exact sum through 128-bit integers, for values that are multiples of 2^-20 below
    /// 2^40: a reference built apart from the partials.
    fn reference(values: &[f64]) -> f64 {
        let scaled: i128 = values
            .iter()
            .map(|v| (v * (1u64 << 20) as f64) as i128)
            .sum();
        scaled as f64 / (1u64 << 20) as f64
    }

    #[test]
    fn sums_are_exact_whatever_was_added_and_removed_before() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let values: Vec<f64> = (0..5_000)
            .map(|_| {
                let scale = [1e-3, 1.0, 1e6, 1e11][rng.random_range(0..4)];
                let v = (rng.random::<f64>() - 0.5) * scale;
                (v * (1u64 << 20) as f64).round() / (1u64 << 20) as f64
            })
            .collect();
        let mut sum = ExactSum::default();
        let window = 37;
        for (i, v) in values.iter().enumerate() {
            sum.add(*v);
            if i >= window {
                sum.remove(values[i - window]);
            }
            let start = (i + 1).saturating_sub(window);
            let expected = reference(&values[start..=i]);
            assert_eq!(sum.value(), expected, "at {i}");
        }
    }

    #[test]
    fn tiny_values_next_to_large_ones_are_not_lost() {
        let mut sum = ExactSum::default();
        for x in [1e100, 1.0, -1e100, 1e-100] {
            sum.add(x);
        }
        assert_eq!(sum.value(), 1.0 + 1e-100);
        sum.remove(1.0);
        assert_eq!(sum.value(), 1e-100);
        // 0.1 + 0.2 rounds once: the nearest double to the exact sum of the two doubles.
        let mut sum = ExactSum::default();
        sum.add(0.1);
        sum.add(0.2);
        assert_eq!(sum.value(), 0.30000000000000004);
        sum.add(-0.3);
        assert_eq!(sum.value(), 2.7755575615628914e-17);
    }

    #[test]
    fn infinities_and_nans_come_and_go() {
        let mut sum = ExactSum::default();
        sum.add(1.5);
        sum.add(f64::INFINITY);
        assert_eq!(sum.value(), f64::INFINITY);
        sum.add(f64::NEG_INFINITY);
        assert!(sum.value().is_nan());
        sum.remove(f64::INFINITY);
        sum.remove(f64::NEG_INFINITY);
        assert_eq!(sum.value(), 1.5);
        sum.add(f64::NAN);
        assert!(sum.value().is_nan());
        sum.remove(f64::NAN);
        assert_eq!(sum.value(), 1.5);
        assert_eq!(ExactSum::default().value(), 0.0);
    }
}
