//! Thread safety: 8 threads doing thousands of registrations, unregistrations, snapshots,
//! resolutions and builds against the global registry at once. Every snapshot must be
//! consistent (a mapping registered in one call is seen whole or not at all), and the run must
//! end (no deadlock).

use std::sync::{Arc, Barrier};
use std::thread;

use patch_core::ModuleExt;
use patch_core::matching::Outcome;
use patch_core::{
    Builder, PatchSet, Replacement, Site, apply_patches, get_patch_mapping, register_patch_mapping,
    unregister_patch_mapping,
};
use patchwork_tests::replacements::{IdentityMlp, ZeroMlp};
use patchwork_tests::{build_toy, global_lock, toy_weights};
use toy_model::{ToyDecoderLayer, ToyMLP};

const THREADS: usize = 8;
const ROUNDS: usize = 400;

/// Checks the pair invariant on a snapshot: every `^PairA_t_n$` comes with its `^PairB_t_n$`.
fn assert_pairs_whole(set: &PatchSet) {
    let keys: Vec<&str> = set.records().iter().map(|r| r.key()).collect();
    for k in &keys {
        if let Some(rest) = k.strip_prefix("^PairA_") {
            let partner = format!("^PairB_{rest}");
            assert!(
                keys.contains(&partner.as_str()),
                "torn snapshot: {k} without {partner}"
            );
        }
    }
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        keys.len(),
        "a key appears twice in one snapshot"
    );
}

#[test]
fn eight_threads_thousands_of_operations() {
    let _g = global_lock();
    // One pattern that matches ToyMLP stays registered throughout, so resolutions have a
    // stable expected answer while everything else churns.
    register_patch_mapping(
        [("^ToyMLP$", Replacement::of::<ZeroMlp>().with_priority(100))],
        false,
    )
    .unwrap();
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                let mut builds = 0usize;
                for n in 0..ROUNDS {
                    // An atomic pair of patterns that match no site.
                    register_patch_mapping(
                        [
                            (format!("^PairA_{t}_{n}$"), Replacement::of::<IdentityMlp>()),
                            (format!("^PairB_{t}_{n}$"), Replacement::of::<IdentityMlp>()),
                        ],
                        false,
                    )
                    .unwrap();
                    // A pattern matching ToyMLP at a lower priority: never the winner.
                    let key = format!("MLP$|thread{t}");
                    register_patch_mapping([(key.clone(), Replacement::of::<IdentityMlp>())], true)
                        .unwrap();

                    let snapshot = PatchSet::global();
                    assert_pairs_whole(&snapshot);
                    let res = snapshot.resolve(ToyMLP::info());
                    match &res.outcome {
                        Outcome::Patched { record, .. } => assert_eq!(record.key(), "^ToyMLP$"),
                        other => panic!("unexpected outcome {other:?}"),
                    }
                    assert!(get_patch_mapping().len() >= 3);

                    if n % 40 == 0 {
                        // Builds amid the churn get the stable winner at every MLP site.
                        let _scope = apply_patches();
                        let scoped = build_toy(&Builder::new(toy_weights())).unwrap();
                        let global = build_toy(
                            &Builder::new(toy_weights()).with_patches(PatchSet::global()),
                        )
                        .unwrap();
                        for model in [&scoped, &global] {
                            for layer in &model.layers {
                                let layer = layer.downcast_ref::<ToyDecoderLayer>().unwrap();
                                assert!(layer.mlp.is::<ZeroMlp>(), "{}", layer.mlp.type_name());
                            }
                        }
                        builds += 2;
                    }

                    unregister_patch_mapping([
                        format!("^PairA_{t}_{n}$"),
                        format!("^PairB_{t}_{n}$"),
                    ])
                    .unwrap();
                    if n % 2 == 1 {
                        unregister_patch_mapping([key]).unwrap();
                    }
                }
                builds
            })
        })
        .collect();
    let total: usize = handles
        .into_iter()
        .map(|h| h.join().expect("no thread panicked"))
        .sum();
    assert_eq!(
        total,
        THREADS * ROUNDS.div_ceil(40) * 2,
        "every thread built every time"
    );
    // Everything each thread registered is gone; only the fixed pattern remains.
    let keys: Vec<String> = get_patch_mapping().keys().map(str::to_string).collect();
    assert_eq!(keys, ["^ToyMLP$"]);
}
