//! `Weights::get_shard`: one process's slice of a checkpoint tensor, read alone where it is
//! rows, recorded with its full shape, rebuilt through its `Gather` by `fetch` and
//! `to_checkpoint_layout`; a slice that does not fit is an error naming the tensor.

mod common;

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use candle_nn::Init;
use common::*;
use patch_checkpoint::{Checkpoint, Gather, Replicas, ShardRange, Weights, to_checkpoint_layout};
use serde_json::json;

/// A stand-in for the other processes: the full tensor is `full`, whose slice this process
/// holds; records the replicas rule it was asked with.
struct Known {
    full: Tensor,
    asked: Mutex<Vec<Replicas>>,
}

impl Gather for Known {
    fn gather(
        &self,
        local: &Tensor,
        range: ShardRange,
        full_len: usize,
        replicas: Replicas,
    ) -> candle_core::Result<Tensor> {
        self.asked.lock().unwrap().push(replicas);
        assert_eq!(self.full.dims()[range.dim], full_len);
        // The others' slices are the full tensor's; this process's is `local`.
        let before = self.full.narrow(range.dim, 0, range.start)?;
        let after_start = range.start + range.len;
        let after = self
            .full
            .narrow(range.dim, after_start, full_len - after_start)?;
        Tensor::cat(&[&before, local, &after], range.dim)
    }
}

fn open(dir: &std::path::Path) -> (Arc<patch_checkpoint::CheckpointSource>, Weights) {
    let source = Arc::new(Checkpoint::open(dir).unwrap().source(vec![]).unwrap());
    let w = Weights::from_arc(source.clone(), DType::F32, &Device::Cpu);
    (source, w)
}

#[test]
fn a_shard_is_its_slice_and_rows_are_read_alone() {
    let dir = tempfile::tempdir().unwrap();
    let rows = ramp(&[8, 4], 0.5);
    let cols = ramp(&[4, 8], -3.0);
    write_checkpoint(
        dir.path(),
        json!({"model_type": "test"}),
        vec![("a.weight", rows.clone()), ("b.weight", cols.clone())],
    );
    let (source, w) = open(dir.path());
    let gather = |full: &Tensor| {
        Arc::new(Known {
            full: full.clone(),
            asked: Mutex::new(Vec::new()),
        })
    };
    let (ga, gb) = (gather(&rows), gather(&cols));
    let range = ShardRange::new;
    let a = w
        .get_shard(
            (8, 4),
            "a.weight",
            Init::Const(0.0),
            range(0, 2, 3),
            ga.clone(),
        )
        .unwrap();
    assert_eq!(values(&a), values(&rows.narrow(0, 2, 3).unwrap()));
    // Only the three rows' bytes were read.
    assert_eq!(source.report().bytes_read, 3 * 4 * 4);
    let b = w
        .get_shard(
            (4, 8),
            "b.weight",
            Init::Const(0.0),
            range(1, 4, 4),
            gb.clone(),
        )
        .unwrap();
    assert_eq!(values(&b), values(&cols.narrow(1, 4, 4).unwrap()));
    source.check().unwrap();
    // The state dict holds the slice, describes the full tensor, and fetch rebuilds it.
    let params = w.params();
    assert_eq!(params.get("a.weight").unwrap().dims(), [3, 4]);
    let entries = params.entries();
    let a_entry = entries.iter().find(|(n, _)| n == "a.weight").unwrap();
    assert_eq!(a_entry.1.tensor.dims(), [8, 4]);
    assert_eq!(params.num_parameters(), 64);
    assert_eq!(
        values(&params.fetch("a.weight").unwrap().unwrap()),
        values(&rows)
    );
    assert_eq!(*ga.asked.lock().unwrap(), [Replicas::Identical]);
    // Values by checkpoint key: this process's value of its slice, gathered, replicas summed.
    let layout = to_checkpoint_layout(&w, &[], |_, t| Ok(t.affine(2.0, 0.0)?)).unwrap();
    assert_eq!(layout["a.weight"].dims(), [8, 4]);
    let doubled_slice = layout["a.weight"].narrow(0, 2, 3).unwrap();
    assert_eq!(values(&doubled_slice), values(&(&a * 2.0).unwrap()));
    assert_eq!(
        values(&layout["a.weight"].narrow(0, 0, 2).unwrap()),
        values(&rows.narrow(0, 0, 2).unwrap())
    );
    assert_eq!(ga.asked.lock().unwrap().last(), Some(&Replicas::Summed));
}

#[test]
fn a_slice_that_does_not_fit_is_an_error_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(
        dir.path(),
        json!({"model_type": "test"}),
        vec![("a.weight", ramp(&[8, 4], 0.0))],
    );
    let (_, w) = open(dir.path());
    let known = Arc::new(Known {
        full: ramp(&[8, 4], 0.0),
        asked: Mutex::new(Vec::new()),
    });
    for range in [
        ShardRange::new(0, 6, 3),
        ShardRange::new(2, 0, 1),
        ShardRange::new(1, 0, 0),
    ] {
        let err = w
            .get_shard((8, 4), "a.weight", Init::Const(0.0), range, known.clone())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a.weight") && err.contains("does not fit"),
            "{err}"
        );
    }
    let err = w
        .declare_replicated("nothing", known)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nothing") && err.contains("never handed out"),
        "{err}"
    );
}
