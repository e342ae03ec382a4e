//! Progress callbacks: loading tells the bytes read of the bytes stored, saving the bytes
//! written, both ending at the total.

use std::sync::{Arc, Mutex};

use patch_checkpoint::{Progress, ProgressEvent, SaveOptions, Stage};
use patchwork_models::{AutoModelForCausalLM, LoadOptions};

mod common;

#[test]
fn loading_and_saving_tell_their_progress() {
    let events: Arc<Mutex<Vec<ProgressEvent>>> = Arc::default();
    let sink = events.clone();
    let progress = Progress::new(move |e| sink.lock().unwrap().push(e));
    let dir = common::fixtures_dir().join("qwen2-moe-tiny");
    let model = AutoModelForCausalLM::from_pretrained(
        &dir,
        &LoadOptions::default().with_progress(progress.clone()),
    )
    .unwrap();
    let loaded: Vec<ProgressEvent> = std::mem::take(&mut *events.lock().unwrap());
    let total = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .len();
    assert!(loaded.len() > 1 && loaded.iter().all(|e| e.stage == Stage::Load));
    assert!(loaded.windows(2).all(|w| w[0].done <= w[1].done));
    let last = loaded.last().unwrap();
    assert_eq!(last.done, last.total);
    assert!(
        last.total < total && last.total > total / 2,
        "tensor bytes, not the header"
    );
    let out = tempfile::tempdir().unwrap();
    let options = SaveOptions {
        progress: Some(progress),
        ..SaveOptions::default()
    };
    model.save_pretrained(out.path(), &options).unwrap();
    let saved = events.lock().unwrap().clone();
    assert!(saved.iter().all(|e| e.stage == Stage::Save));
    assert_eq!(saved.last().unwrap().done, last.total);
    assert_eq!(saved.last().unwrap().total, last.total);
}
