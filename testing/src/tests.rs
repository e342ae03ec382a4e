use candle_core::{Device, Tensor};

use super::*;

fn t(v: &[f32]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap()
}

#[test]
fn a_nan_or_an_infinity_on_either_side_fails_every_comparison() {
    let good = t(&[1.0, -2.0, 3.0]);
    for bad in [
        t(&[f32::NAN; 3]),
        t(&[1.0, f32::NAN, 3.0]),
        t(&[1.0, -2.0, f32::INFINITY]),
        t(&[f32::NEG_INFINITY, -2.0, 3.0]),
    ] {
        for tol in [
            LOGITS,
            GRADIENTS,
            Tolerance::absolute(1e9),
            Tolerance::of_max(1.0),
        ] {
            let e = check_close("x", &bad, &good, tol).unwrap_err().0;
            assert!(e.contains("not finite"), "{e}");
            let e = check_close("x", &good, &bad, tol).unwrap_err().0;
            assert!(e.contains("not finite"), "{e}");
        }
        assert!(check_differs("x", &bad, &good, 0.0).is_err());
        // NaN or infinite: no bound holds.
        let d = max_abs_diff(&bad, &good).unwrap();
        assert!(d.is_nan() || d == f32::INFINITY, "{d}");
    }
    // The hole this crate closes: candle's max and a fold over f32::max skip NaN.
    let nan = t(&[f32::NAN; 3]);
    let skipped = [f32::NAN; 3].iter().fold(0f32, |m, &x| f32::max(m, x));
    assert_eq!(skipped, 0.0);
    assert!(max_abs(&nan).unwrap().is_nan());
    assert!(max_abs_diff(&nan, &nan).unwrap().is_nan());
}

#[test]
fn entries_left_out_are_not_checked_and_nothing_compared_is_an_error() {
    let a = t(&[1.0, f32::NAN, 3.0]);
    let b = t(&[1.0, f32::NEG_INFINITY, 3.0]);
    let r = compare("x", &a, &b, LOGITS, Some(&|i| i != 1)).unwrap();
    assert_eq!((r.compared, r.max_abs_diff), (2, 0.0));
    let e = compare("x", &a, &b, LOGITS, Some(&|_| false))
        .unwrap_err()
        .0;
    assert!(e.contains("nothing compared"), "{e}");
    let e = check_close("x", &t(&[1.0]), &b, LOGITS).unwrap_err().0;
    assert!(e.contains("shape [1], expected [3]"), "{e}");
}

#[test]
fn the_logits_bound_is_a_fraction_of_the_larger_of_one_and_the_scale() {
    let e = t(&[0.5, -0.25]);
    check_close("x", &t(&[0.5 + 0.9e-4, -0.25]), &e, LOGITS).unwrap();
    let m = check_close("x", &t(&[0.5 + 1.1e-4, -0.25]), &e, LOGITS)
        .unwrap_err()
        .0;
    assert!(m.contains("1 of 2 entries outside their bound"), "{m}");
    let e = t(&[100.0, 0.0]);
    check_close("x", &t(&[100.0, 0.9e-2]), &e, LOGITS).unwrap();
    assert!(check_close("x", &t(&[100.0, 1.1e-2]), &e, LOGITS).is_err());
}

#[test]
fn the_gradient_bound_is_per_element_above_a_floor_tied_to_the_scale() {
    let reference: Vec<f32> = vec![1.0, 0.5, 0.05, 0.01, 0.0];
    let e = Tensor::new(reference.as_slice(), &Device::Cpu).unwrap();
    // 1% off is caught at every entry whose magnitude is above the floor's reach.
    for (i, &r) in reference.iter().enumerate() {
        let mut off = reference.clone();
        off[i] = r * 1.01;
        let caught = check_gradient("g", &t(&off), &e).is_err();
        assert_eq!(
            caught,
            0.01 * r > GRADIENTS.bound(r, 1.0),
            "entry {i} ({r})"
        );
    }
    // The largest entry gets no more than the per-tensor bound it had, 2e-4 * max + 1e-7.
    let b = GRADIENTS.bound(1.0, 1.0);
    assert!(b <= 2e-4 + 1e-7, "{b}");
    // 1% is caught down to 0.1% of the scale: the entry at 0.01 above, and this one.
    let e = t(&[1.0, 2e-3]);
    assert!(check_gradient("g", &t(&[1.0, 2e-3 * 1.01]), &e).is_err());
    // An all-zero gradient must come out zero to 1e-7.
    let zero = t(&[0.0, 0.0]);
    check_gradient("g", &t(&[0.0, 0.9e-7]), &zero).unwrap();
    assert!(check_gradient("g", &t(&[0.0, 1.1e-7]), &zero).is_err());
}

#[test]
fn reports_say_how_much_of_the_bound_the_worst_entry_uses() {
    let r = check_close(
        "x",
        &t(&[1.0, 2.5]),
        &t(&[1.0, 2.0]),
        Tolerance::absolute(1.0),
    )
    .unwrap();
    assert_eq!((r.worst_at, r.worst_ratio, r.scale), (1, 0.5, 2.0));
    assert_eq!(assert_differs(&t(&[1.0]), &t(&[1.5]), 0.1, "x"), 0.5);
    let e = check_differs("x", &t(&[1.0]), &t(&[1.05]), 0.1)
        .unwrap_err()
        .0;
    assert!(e.contains("expected more than"), "{e}");
}
