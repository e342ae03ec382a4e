//! A model split across processes is the same model with a few sites replaced: tensor and
//! expert parallelism as a patch set (transformers' `tp_plan` / expert parallelism).
//!
//! 1. The communicator: MPI's when `mpirun` started this program and it was built with
//!    `--features mpi`, else a group of one process (every collective the identity).
//! 2. The plan `tp+ep` on the embedded qwen2-moe-tiny: attention heads, MLP widths and each
//!    MoE layer's experts split across the ranks; each rank reads only its slices.
//! 3. A training step: the loss and every gradient by checkpoint key (gathered back to the
//!    checkpoint's shapes) equal the whole model's, computed beside it in the same process.
//!
//! `cargo run --release --example parallel`, or across two processes:
//! `mpirun -n 2 cargo run --release --example parallel --features mpi`.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use patchwork_models::{AutoModelForCausalLM, CausalLM, ForwardOptions, LoadOptions};
use patchwork_parallel::{Communicator, ParallelPlan, SingleProcess, sync_gradients};
use patchwork_testing::{Tolerance, check_close};

type Error = Box<dyn std::error::Error>;

/// MPI's communicator under a launcher (with the `mpi` feature), else one process.
fn communicator() -> Result<Arc<dyn Communicator>, Error> {
    #[cfg(feature = "mpi")]
    if patchwork_parallel::launched() {
        return Ok(Arc::new(
            patchwork_parallel::MpiCommunicator::from_launcher()?,
        ));
    }
    Ok(Arc::new(SingleProcess))
}

/// Loads `dir` split by `plan` over `comm` and whole, runs one training pass on both, and
/// checks the loss and every gradient agree; returns the number of gradients compared.
pub fn run(dir: &Path, plan: &str, comm: &Arc<dyn Communicator>) -> Result<usize, Error> {
    let plan: ParallelPlan = plan.parse()?;
    let split_options = LoadOptions::default()
        .trainable()
        .with_added_patches(plan.patches(comm.clone())?);
    let split = AutoModelForCausalLM::from_pretrained(dir, &split_options)?;
    let whole = AutoModelForCausalLM::from_pretrained(dir, &LoadOptions::default().trainable())?;
    let root = comm.rank() == 0;
    if root {
        println!("{plan} over {} rank(s) ({}):", comm.world(), comm.backend());
        for path in [
            "model.layers.0.self_attn",
            "model.layers.0.self_attn.o_proj",
            "model.layers.0.mlp.experts",
        ] {
            let site = split.report().at(path).ok_or(format!("{path} not built"))?;
            println!("  {path}: {}", site.details.join("; "));
        }
    }
    let ids = Tensor::new(
        &[[1u32, 17, 42, 99, 7, 23], [5, 61, 33, 12, 2, 250]],
        &Device::Cpu,
    )?;
    let pass = ForwardOptions {
        labels: Some(ids.to_dtype(DType::I64)?),
        output_router_logits: Some(true),
        ..ForwardOptions::default()
    };
    let step = |model: &CausalLM, split: bool| -> Result<_, Error> {
        let out = model.forward_with(&ids, None, None, &pass)?;
        let loss = out.loss.ok_or("no loss")?;
        let mut grads = loss.backward()?;
        if split {
            sync_gradients(model.weights(), &mut grads, comm)?;
        }
        Ok((loss, model.gradients(&grads)?))
    };
    let (loss, grads) = step(&split, true)?;
    let (want_loss, want_grads) = step(&whole, false)?;
    let same = Tolerance::of_max(1e-5);
    check_close("loss", &loss, &want_loss, same)?;
    for (key, want) in &want_grads {
        let got = grads.get(key).ok_or(format!("no gradient for {key}"))?;
        check_close(key, got, want, same)?;
    }
    if root {
        println!(
            "loss {:.6} and {} gradients by checkpoint key equal the whole model's",
            loss.to_scalar::<f32>()?,
            want_grads.len()
        );
    }
    Ok(want_grads.len())
}

fn main() -> Result<(), Error> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen2-moe-tiny");
    let comm = communicator()?;
    let compared = run(&dir, "tp+ep", &comm)?;
    if compared == 0 {
        return Err("no gradient compared".into());
    }
    Ok(())
}

#[test]
fn example_runs() {
    main().expect("the example runs");
}
