//! `Weights::get_unkept_chunks`: a checkpoint key read a few rows at a time gives what a whole
//! read gives, records the request as deferred, and a bad chunk is a load problem, not a
//! panic or a short tensor.

mod common;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::Init;
use common::*;
use patch_checkpoint::{Checkpoint, Error, Problem, Weights};
use serde_json::json;

/// Collects the chunks `get_unkept_chunks` hands for `name` (`shape`), `rows` at a time.
fn chunks(w: &Weights, name: &str, shape: &[usize], rows: usize) -> Vec<Tensor> {
    let mut out = Vec::new();
    w.get_unkept_chunks(shape, name, Init::Const(0.0), rows, &mut |t| {
        out.push(t);
        Ok(())
    })
    .unwrap();
    out
}

fn weights(
    dir: &std::path::Path,
    dtype: DType,
) -> (Arc<patch_checkpoint::CheckpointSource>, Weights) {
    let source = Arc::new(Checkpoint::open(dir).unwrap().source(vec![]).unwrap());
    let w = Weights::from_arc(source.clone(), dtype, &Device::Cpu);
    (source, w)
}

#[test]
fn chunks_of_a_key_are_its_rows_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let matrix = ramp(&[10, 4], 0.5);
    let bank = ramp(&[3, 2, 4], -7.0);
    write_checkpoint(
        dir.path(),
        json!({"model_type": "test"}),
        vec![("m.weight", matrix.clone()), ("bank", bank.clone())],
    );
    let (source, w) = weights(dir.path(), DType::F32);
    let got = chunks(&w, "m.weight", &[10, 4], 3);
    assert_eq!(
        got.iter().map(|t| t.dims().to_vec()).collect::<Vec<_>>(),
        vec![vec![3, 4], vec![3, 4], vec![3, 4], vec![1, 4]]
    );
    assert_eq!(values(&Tensor::cat(&got, 0).unwrap()), values(&matrix));
    let got = chunks(&w, "bank", &[3, 2, 4], 1);
    assert_eq!(got.len(), 3);
    assert_eq!(values(&Tensor::cat(&got, 0).unwrap()), values(&bank));
    source.check().unwrap();
    // Deferred: counted, not held, and produced again on request.
    let params = w.params();
    assert!(params.is_deferred("m.weight") && params.is_deferred("bank"));
    assert_eq!(
        values(&params.fetch("m.weight").unwrap().unwrap()),
        values(&matrix)
    );
}

#[test]
fn chunks_convert_the_stored_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let matrix = ramp(&[5, 8], 0.25).to_dtype(DType::BF16).unwrap();
    write_checkpoint(
        dir.path(),
        json!({"model_type": "test"}),
        vec![("m", matrix.clone())],
    );
    let (_, w) = weights(dir.path(), DType::F32);
    let got = chunks(&w, "m", &[5, 8], 2);
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|t| t.dtype() == DType::F32));
    let whole = Tensor::cat(&got, 0).unwrap();
    assert_eq!(
        values(&whole),
        values(&matrix.to_dtype(DType::F32).unwrap())
    );
}

#[test]
fn a_non_finite_row_is_a_problem_and_the_rest_comes_as_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = values(&ramp(&[6, 4], 1.0));
    v[4 * 4 + 2] = f32::NAN;
    let matrix = Tensor::from_vec(v, (6, 4), &Device::Cpu).unwrap();
    write_checkpoint(
        dir.path(),
        json!({"model_type": "test"}),
        vec![("m", matrix)],
    );
    let (source, w) = weights(dir.path(), DType::F32);
    let got = chunks(&w, "m", &[6, 4], 2);
    // Rows 0..4 were read; the chunk holding row 4 failed and the two rows left are zeros.
    let rows: usize = got.iter().map(|t| t.dim(0).unwrap()).sum();
    assert_eq!(rows, 6);
    let whole = values(&Tensor::cat(&got, 0).unwrap());
    assert!(whole[16..].iter().all(|&x| x == 0.0), "{whole:?}");
    let err = source.check().unwrap_err();
    let Error::Accounting { problems, .. } = &err else {
        panic!("{err}")
    };
    assert!(
        matches!(&problems[..], [Problem::Unreadable { name, detail }]
            if name == "m" && detail.contains("element 18 of shape [6, 4]")),
        "{err}"
    );
}

#[test]
fn an_error_of_the_consumer_stops_the_read_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(
        dir.path(),
        json!({"model_type": "test"}),
        vec![("m", ramp(&[6, 4], 1.0))],
    );
    let (_, w) = weights(dir.path(), DType::F32);
    let mut calls = 0;
    let err = w
        .get_unkept_chunks(&[6, 4][..], "m", Init::Const(0.0), 2, &mut |_| {
            calls += 1;
            Err(Error::Candle(candle_core::Error::Msg(
                "consumer says no".into(),
            )))
        })
        .unwrap_err();
    assert_eq!(calls, 1);
    assert!(err.to_string().contains("consumer says no"), "{err}");
}
