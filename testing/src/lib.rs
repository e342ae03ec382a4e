//! The one tensor comparison of the workspace's tests and examples.
//!
//! `fold(0f32, f32::max)` and candle's `max` both skip NaN, so an all-NaN result compared
//! that way scores a difference of 0 and passes. Here a NaN or an infinity in either tensor,
//! at any compared entry, fails the comparison with a message naming where, and every bound
//! is checked element by element (`d <= bound` is false for a NaN `d`).
//!
//! A bound for entry `i` ([`Tolerance`]) is
//! `absolute + of_scale * max(scale_floor, max |expected|) + of_element * |expected_i|`,
//! which covers the forms the tests use: a plain absolute bound, the fixtures' logits rule
//! ([`LOGITS`]), a fraction of a tensor's largest value, and the per-element gradient rule
//! ([`GRADIENTS`]).

#![warn(missing_docs)]

use std::fmt;

use candle_core::{DType, Tensor};

#[cfg(test)]
mod tests;

/// How far `actual` may be from `expected` at entry `i`:
/// `absolute + of_scale * max(scale_floor, max |expected|) + of_element * |expected_i|`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// A bound every entry gets.
    pub absolute: f32,
    /// A fraction of the tensor's scale, `max(scale_floor, max |expected|)` over the compared
    /// entries.
    pub of_scale: f32,
    /// The least scale `of_scale` multiplies.
    pub scale_floor: f32,
    /// A fraction of the entry's own `|expected_i|`.
    pub of_element: f32,
}

impl Tolerance {
    /// `|actual_i - expected_i| <= tol` everywhere.
    pub const fn absolute(tol: f32) -> Self {
        Self {
            absolute: tol,
            of_scale: 0.0,
            scale_floor: 0.0,
            of_element: 0.0,
        }
    }

    /// `|actual_i - expected_i| <= rel * max(1, max |expected|)` everywhere: the fixtures'
    /// rule for float32 outputs.
    pub const fn scaled(rel: f32) -> Self {
        Self {
            absolute: 0.0,
            of_scale: rel,
            scale_floor: 1.0,
            of_element: 0.0,
        }
    }

    /// `|actual_i - expected_i| <= rel * max |expected|` everywhere.
    pub const fn of_max(rel: f32) -> Self {
        Self {
            absolute: 0.0,
            of_scale: rel,
            scale_floor: 0.0,
            of_element: 0.0,
        }
    }

    /// `|actual_i - expected_i| <= rtol * |expected_i| + floor * max |expected| + absolute`:
    /// each entry relative to itself, with a floor tied to the tensor's scale for the entries
    /// near zero (and `absolute` for a tensor that is all zero).
    pub const fn per_element(rtol: f32, floor: f32, absolute: f32) -> Self {
        Self {
            absolute,
            of_scale: floor,
            scale_floor: 0.0,
            of_element: rtol,
        }
    }

    /// The bound for an entry `expected` of a tensor whose scale (`max |expected|`) is `max`.
    pub fn bound(&self, expected: f32, max: f32) -> f32 {
        self.absolute + self.of_scale * max.max(self.scale_floor) + self.of_element * expected.abs()
    }
}

/// Float32 logits, hidden states, attention probabilities, router logits and losses against
/// transformers' float32 references: `max |ours - ref| <= 1e-4 * max(1, max |ref|)`
/// (fixtures/README.md).
pub const LOGITS: Tolerance = Tolerance::scaled(1e-4);

/// Gradients against transformers' (fixtures/README.md), element by element:
/// `|ours_i - ref_i| <= 1e-4 * |ref_i| + 1e-5 * max |ref| + 1e-7`.
///
/// The floor, `1e-5 * max |ref|`, is what float32 leaves everywhere: transformers' own float32
/// gradients are within 3e-6 of max |ref| of a float64 computation on the fixtures, and ours
/// measured at most 2.8e-6 of max |ref| from transformers' on any element (qwen3-tiny; 1.5e-6
/// to 2.6e-6 on the others), an absolute error that does not shrink with the element: the
/// worst element uses 7-14% of its bound (measured; models/tests/training.rs prints it). `1e-4 * |ref_i|` leaves room for the float32
/// rounding of each element's own sum; the largest elements get `1.1e-4 * max |ref| + 1e-7`,
/// tighter than the per-tensor `2e-4 * max |ref| + 1e-7` this replaced. A 1% error in one
/// element fails it wherever `|ref_i|` is above about 0.1% of `max |ref|`, which the per-tensor
/// bound only caught at the largest elements. An all-zero gradient must come out zero to 1e-7.
pub const GRADIENTS: Tolerance = Tolerance::per_element(1e-4, 1e-5, 1e-7);

/// What a comparison that passed found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Report {
    /// How many entries were compared.
    pub compared: usize,
    /// The largest `|actual_i - expected_i|`.
    pub max_abs_diff: f32,
    /// `max |expected_i|` over the compared entries.
    pub scale: f32,
    /// The largest `|actual_i - expected_i| / bound_i`: how much of its bound the worst entry
    /// uses (at most 1).
    pub worst_ratio: f32,
    /// The flat index of that entry.
    pub worst_at: usize,
}

/// Why a comparison failed: a message naming what was compared and the offending entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch(pub String);

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Mismatch {}

impl From<Mismatch> for String {
    fn from(m: Mismatch) -> String {
        m.0
    }
}

/// The entries of `t` as float32, flattened in row-major order.
pub fn values(t: &Tensor) -> Result<Vec<f32>, Mismatch> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| {
            Mismatch(format!(
                "reading a {:?} {:?} tensor: {e}",
                t.dtype(),
                t.dims()
            ))
        })
}

/// Compares `actual` with `expected` (same shape) over the entries `keep` selects by flat index
/// (all when `None`). Fails on a shape difference, on no entry compared, on a NaN or infinity
/// at a compared entry of either tensor, and on any entry outside its bound; the message starts
/// with `what`.
pub fn compare(
    what: &str,
    actual: &Tensor,
    expected: &Tensor,
    tol: Tolerance,
    keep: Option<&dyn Fn(usize) -> bool>,
) -> Result<Report, Mismatch> {
    if actual.dims() != expected.dims() {
        return Err(Mismatch(format!(
            "{what}: shape {:?}, expected {:?}",
            actual.dims(),
            expected.dims()
        )));
    }
    let a = values(actual).map_err(|e| Mismatch(format!("{what}: {e}")))?;
    let e = values(expected).map_err(|e| Mismatch(format!("{what}: {e}")))?;
    compare_values(what, &a, &e, tol, keep)
}

/// [`compare`] on flat values.
pub fn compare_values(
    what: &str,
    actual: &[f32],
    expected: &[f32],
    tol: Tolerance,
    keep: Option<&dyn Fn(usize) -> bool>,
) -> Result<Report, Mismatch> {
    if actual.len() != expected.len() {
        return Err(Mismatch(format!(
            "{what}: {} entries, expected {}",
            actual.len(),
            expected.len()
        )));
    }
    let kept: Vec<usize> = (0..expected.len())
        .filter(|&i| keep.is_none_or(|k| k(i)))
        .collect();
    if kept.is_empty() {
        return Err(Mismatch(format!("{what}: nothing compared")));
    }
    let non_finite: Vec<usize> = kept
        .iter()
        .copied()
        .filter(|&i| !actual[i].is_finite() || !expected[i].is_finite())
        .collect();
    if let Some(&i) = non_finite.first() {
        return Err(Mismatch(format!(
            "{what}: {} of {} compared entries are not finite, the first at flat index {i} \
             (actual {}, expected {})",
            non_finite.len(),
            kept.len(),
            actual[i],
            expected[i]
        )));
    }
    let scale = kept.iter().map(|&i| expected[i].abs()).fold(0f32, f32::max);
    let mut report = Report {
        compared: kept.len(),
        max_abs_diff: 0.0,
        scale,
        worst_ratio: 0.0,
        worst_at: kept[0],
    };
    let mut outside = 0usize;
    for &i in &kept {
        let d = (actual[i] - expected[i]).abs();
        let bound = tol.bound(expected[i], scale);
        let ratio = if d == 0.0 {
            0.0
        } else if bound > 0.0 {
            d / bound
        } else {
            f32::INFINITY
        };
        report.max_abs_diff = report.max_abs_diff.max(d);
        // Every compared entry is finite here, so `d` is a number.
        if d > bound {
            outside += 1;
        }
        if ratio > report.worst_ratio {
            report.worst_ratio = ratio;
            report.worst_at = i;
        }
    }
    if outside > 0 {
        let i = report.worst_at;
        return Err(Mismatch(format!(
            "{what}: {outside} of {} entries outside their bound; the worst at flat index {i}: \
             actual {}, expected {}, |diff| {:e} > bound {:e} ({:.2}x; max |expected| {scale:e})",
            kept.len(),
            actual[i],
            expected[i],
            (actual[i] - expected[i]).abs(),
            tol.bound(expected[i], scale),
            report.worst_ratio
        )));
    }
    Ok(report)
}

/// [`compare`] over every entry.
pub fn check_close(
    what: &str,
    actual: &Tensor,
    expected: &Tensor,
    tol: Tolerance,
) -> Result<Report, Mismatch> {
    compare(what, actual, expected, tol, None)
}

/// [`check_close`], panicking with its message on a mismatch.
#[track_caller]
pub fn assert_close(actual: &Tensor, expected: &Tensor, tol: Tolerance, what: &str) -> Report {
    check_close(what, actual, expected, tol).unwrap_or_else(|m| panic!("{m}"))
}

/// [`compare`] over the entries `keep` selects, panicking with its message on a mismatch.
#[track_caller]
pub fn assert_close_where(
    actual: &Tensor,
    expected: &Tensor,
    tol: Tolerance,
    what: &str,
    keep: impl Fn(usize) -> bool,
) -> Report {
    compare(what, actual, expected, tol, Some(&keep)).unwrap_or_else(|m| panic!("{m}"))
}

/// One gradient against its reference with [`GRADIENTS`].
pub fn check_gradient(key: &str, ours: &Tensor, reference: &Tensor) -> Result<Report, Mismatch> {
    check_close(&format!("{key} gradient"), ours, reference, GRADIENTS)
}

/// `max |a_i - b_i|` (same shape): NaN when either tensor has a NaN, infinite when an infinity
/// meets a finite value, so that `max_abs_diff(a, b)? <= tol` is false for them.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32, Mismatch> {
    if a.dims() != b.dims() {
        return Err(Mismatch(format!(
            "max_abs_diff: shapes {:?} and {:?}",
            a.dims(),
            b.dims()
        )));
    }
    let (a, b) = (values(a)?, values(b)?);
    let mut max = 0f32;
    for (x, y) in a.iter().zip(&b) {
        let d = (x - y).abs();
        if d.is_nan() {
            return Ok(f32::NAN);
        }
        max = max.max(d);
    }
    Ok(max)
}

/// `max |t_i|`: NaN when `t` has a NaN.
pub fn max_abs(t: &Tensor) -> Result<f32, Mismatch> {
    let v = values(t)?;
    if v.iter().any(|x| x.is_nan()) {
        return Ok(f32::NAN);
    }
    Ok(v.iter().fold(0f32, |m, x| m.max(x.abs())))
}

/// That `a` and `b` (same shape, every entry finite) differ somewhere by more than `min`:
/// for tests that a change shows. Returns the largest difference.
pub fn check_differs(what: &str, a: &Tensor, b: &Tensor, min: f32) -> Result<f32, Mismatch> {
    if a.dims() != b.dims() {
        return Err(Mismatch(format!(
            "{what}: shapes {:?} and {:?}",
            a.dims(),
            b.dims()
        )));
    }
    let (x, y) = (values(a)?, values(b)?);
    if let Some(i) = (0..x.len()).find(|&i| !x[i].is_finite() || !y[i].is_finite()) {
        return Err(Mismatch(format!(
            "{what}: entry {i} is not finite ({} and {})",
            x[i], y[i]
        )));
    }
    let d = x
        .iter()
        .zip(&y)
        .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
    if d > min {
        Ok(d)
    } else {
        Err(Mismatch(format!(
            "{what}: the tensors differ by at most {d:e}, expected more than {min:e}"
        )))
    }
}

/// [`check_differs`], panicking with its message when they do not differ.
#[track_caller]
pub fn assert_differs(a: &Tensor, b: &Tensor, min: f32, what: &str) -> f32 {
    check_differs(what, a, b, min).unwrap_or_else(|m| panic!("{m}"))
}
