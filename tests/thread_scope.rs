//! `apply_patches` belongs to the current thread: two threads building the same model at once,
//! one inside the scope and one outside, each get what they asked for. Also: nested scopes,
//! explicit `PatchSet`s, and out-of-order guard drops.

use patch_core::ModuleExt;
use std::sync::{Arc, Barrier};
use std::thread;

use patch_core::{Builder, PatchSet, Replacement, apply_patches, register_patch_mapping};
use patchwork_tests::replacements::{IdentityMlp, ZeroMlp};
use patchwork_tests::{build_toy, global_lock, toy_weights};
use toy_model::{ToyDecoderLayer, ToyMLP, ToyModel};

fn mlp_type(model: &ToyModel) -> &'static str {
    let layer = model.layers[0]
        .downcast_ref::<ToyDecoderLayer>()
        .expect("layers are ToyDecoderLayer");
    layer.mlp.type_name()
}

#[test]
fn two_threads_one_in_scope_one_outside_each_get_what_they_asked_for() {
    let _g = global_lock();
    register_patch_mapping([("ToyMLP", Replacement::of::<ZeroMlp>())], false).unwrap();
    const ROUNDS: usize = 50;
    // Both threads pass the barrier at every round, so their builds overlap while one of them
    // holds its scope for the whole run.
    let barrier = Arc::new(Barrier::new(2));
    let scoped = {
        let barrier = barrier.clone();
        thread::spawn(move || {
            let _scope = apply_patches();
            (0..ROUNDS)
                .map(|_| {
                    barrier.wait();
                    mlp_type(&build_toy(&Builder::new(toy_weights())).unwrap())
                })
                .collect::<Vec<_>>()
        })
    };
    let unscoped = thread::spawn(move || {
        (0..ROUNDS)
            .map(|_| {
                barrier.wait();
                mlp_type(&build_toy(&Builder::new(toy_weights())).unwrap())
            })
            .collect::<Vec<_>>()
    });
    let scoped = scoped.join().unwrap();
    let unscoped = unscoped.join().unwrap();
    assert!(
        scoped
            .iter()
            .all(|t| *t == std::any::type_name::<ZeroMlp>()),
        "{scoped:?}"
    );
    assert!(
        unscoped
            .iter()
            .all(|t| *t == std::any::type_name::<ToyMLP>()),
        "{unscoped:?}"
    );
}

#[test]
fn a_spawned_thread_does_not_inherit_its_parents_scope() {
    let set = PatchSet::from_mapping([("ToyMLP", Replacement::of::<ZeroMlp>())]).unwrap();
    let _scope = set.enter();
    let child = thread::spawn(|| mlp_type(&build_toy(&Builder::new(toy_weights())).unwrap()))
        .join()
        .unwrap();
    assert_eq!(child, std::any::type_name::<ToyMLP>());
    assert_eq!(
        mlp_type(&build_toy(&Builder::new(toy_weights())).unwrap()),
        std::any::type_name::<ZeroMlp>()
    );
}

#[test]
fn nested_scopes_use_the_innermost_and_restore_on_exit() {
    let outer = PatchSet::from_mapping([("ToyMLP", Replacement::of::<ZeroMlp>())]).unwrap();
    let inner = PatchSet::from_mapping([("ToyMLP", Replacement::of::<IdentityMlp>())]).unwrap();
    let build = || mlp_type(&build_toy(&Builder::new(toy_weights())).unwrap());
    outer.run_with(|| {
        assert_eq!(build(), std::any::type_name::<ZeroMlp>());
        inner.run_with(|| assert_eq!(build(), std::any::type_name::<IdentityMlp>()));
        assert_eq!(build(), std::any::type_name::<ZeroMlp>());
    });
    assert_eq!(build(), std::any::type_name::<ToyMLP>());

    // Guards dropped out of order end their own scope only.
    let a = outer.enter();
    let b = inner.enter();
    drop(a);
    assert_eq!(build(), std::any::type_name::<IdentityMlp>());
    drop(b);
    assert_eq!(build(), std::any::type_name::<ToyMLP>());
}

#[test]
fn an_explicit_set_ignores_the_threads_scope() {
    let scoped = PatchSet::from_mapping([("ToyMLP", Replacement::of::<ZeroMlp>())]).unwrap();
    let _scope = scoped.enter();
    let model = build_toy(&Builder::new(toy_weights()).with_patches(PatchSet::empty())).unwrap();
    assert_eq!(mlp_type(&model), std::any::type_name::<ToyMLP>());
}
