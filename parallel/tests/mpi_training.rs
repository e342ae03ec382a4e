//! Training split across two processes equals training in one: under `mpirun -n 2`, each rank
//! trains a split model (tp on llama-tiny, qwen3-tiny and qwen3-moe-tiny, tp+ep on
//! qwen2-moe-tiny, ep on qwen3-moe-tiny) and, beside it, the whole model alone, for a few SGD
//! steps; every step's loss and, at the end, every weight (gathered back to the checkpoint's
//! shapes) agree within 1e-5 relative, and so does the checkpoint rank 0 saves from the
//! gathered slices. `cargo test` starts this test's own binary under `mpirun`; the ranks run
//! the `child` part.
//!
//! SGD, because its step is linear in the gradient, so gradients that agree within 1e-5 give
//! weights that do. Adam divides each step by the gradient's running RMS, which turns the last
//! bits of a near-zero gradient into a whole step: after three AdamW steps one embedding entry
//! of llama-tiny was 1.8e-5 apart (bound 9.6e-6), a property of Adam, not of the split.
#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{Device, Tensor};
use candle_nn::{Optimizer, SGD};
use patchwork_models::{AutoModelForCausalLM, CausalLM, ForwardOptions, LoadOptions};
use patchwork_parallel::{
    Communicator, MpiCommunicator, ParallelPlan, save_pretrained, sync_gradients,
};
use patchwork_testing::{Tolerance, assert_close};

const CHILD: &str = "PATCHWORK_MPI_TRAINING_CHILD";
const SAME: Tolerance = Tolerance::of_max(1e-5);
const CASES: [(&str, &str); 5] = [
    ("llama-tiny", "tp"),
    ("qwen3-tiny", "tp"),
    ("qwen2-moe-tiny", "tp+ep"),
    ("qwen3-moe-tiny", "ep"),
    ("qwen3-moe-tiny", "tp"),
];

#[test]
fn training_under_mpirun_equals_one_process() {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    let stdout = common::under_mpirun(
        "training_under_mpirun_equals_one_process",
        CHILD,
        Duration::from_secs(600),
    );
    println!("{stdout}");
    for (name, plan) in CASES {
        assert!(
            stdout.contains(&format!("{name} {plan}: trained alike")),
            "{stdout}"
        );
    }
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

fn load(name: &str, options: LoadOptions) -> CausalLM {
    AutoModelForCausalLM::from_pretrained(fixture(name), &options.trainable()).unwrap()
}

fn optimizer(model: &CausalLM) -> SGD {
    SGD::new(model.vars().unwrap().all_vars(), 0.5).unwrap()
}

fn child() {
    let comm: Arc<dyn Communicator> = Arc::new(MpiCommunicator::from_launcher().unwrap());
    let ids: Vec<u32> = vec![1, 17, 42, 99, 7, 23, 5, 61, 33, 12, 2, 250];
    let input_ids = Tensor::from_vec(ids.clone(), (2, 6), &Device::Cpu).unwrap();
    let labels = input_ids.to_dtype(candle_core::DType::I64).unwrap();
    let pass = ForwardOptions {
        labels: Some(labels),
        output_router_logits: Some(true),
        ..ForwardOptions::default()
    };
    for (name, plan) in CASES {
        let plan: ParallelPlan = plan.parse().unwrap();
        let split = load(
            name,
            LoadOptions::default().with_added_patches(plan.patches(comm.clone()).unwrap()),
        );
        let whole = load(name, LoadOptions::default());
        let (mut opt_split, mut opt_whole) = (optimizer(&split), optimizer(&whole));
        for step in 0..3 {
            let a = split.forward_with(&input_ids, None, None, &pass).unwrap();
            let b = whole.forward_with(&input_ids, None, None, &pass).unwrap();
            let (la, lb) = (a.loss.unwrap(), b.loss.unwrap());
            assert_close(&la, &lb, SAME, &format!("{name} {plan} step {step} loss"));
            let mut grads = la.backward().unwrap();
            sync_gradients(split.weights(), &mut grads, &comm).unwrap();
            opt_split.step(&grads).unwrap();
            opt_whole.backward_step(&lb).unwrap();
        }
        let (pa, pb) = (split.weights().params(), whole.weights().params());
        let names: Vec<String> = pb.vars().into_iter().map(|(n, _)| n).collect();
        assert_eq!(pa.vars().len(), names.len(), "{name}: the same parameters");
        let mut moved = 0f32;
        for n in &names {
            let ours = pa.fetch(n).unwrap().unwrap();
            let theirs = pb.get(n).unwrap();
            assert_close(
                &ours,
                &theirs,
                SAME,
                &format!("{name} {plan}: {n} after training"),
            );
            let start =
                AutoModelForCausalLM::from_pretrained(fixture(name), &LoadOptions::default())
                    .ok()
                    .and_then(|m| m.weights().params().get(n));
            if let Some(start) = start {
                moved = moved.max(patchwork_testing::max_abs_diff(&theirs, &start).unwrap());
            }
        }
        assert!(moved > 1e-3, "{name}: training moved the weights ({moved})");
        // Saved by rank 0 from the gathered slices: the checkpoint one process writes.
        let dir = std::env::temp_dir().join(format!("patchwork-mpi-save-{}", std::process::id()));
        let options = patch_checkpoint::SaveOptions::default();
        let report = save_pretrained(&split, &comm, dir.join("split"), &options).unwrap();
        assert_eq!(report.is_some(), comm.rank() == 0);
        if comm.rank() == 0 {
            whole.save_pretrained(dir.join("whole"), &options).unwrap();
            let read = |d: &str| {
                candle_core::safetensors::load(dir.join(d).join("model.safetensors"), &Device::Cpu)
                    .unwrap()
            };
            let (a, b) = (read("split"), read("whole"));
            let mut keys: Vec<&String> = b.keys().collect();
            keys.sort();
            assert_eq!(a.len(), b.len(), "{name}: the same checkpoint keys");
            for key in keys {
                assert_close(
                    &a[key],
                    &b[key],
                    SAME,
                    &format!("{name} {plan}: saved {key}"),
                );
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
        if comm.rank() == 0 {
            println!("{name} {plan}: trained alike ({} parameters)", names.len());
        }
    }
    comm.barrier().unwrap();
}
