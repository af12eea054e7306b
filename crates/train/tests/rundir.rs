//! Run directories are never mixed or destroyed: a fresh run refuses a used directory,
//! `--resume` continues only its own run's checkpoints, `--overwrite` replaces only a kiln run,
//! and pruning never deletes the checkpoint just written.
#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use kiln_train::{Batch, RunDir, RunMode, TrainError, Trainer, list_checkpoints};
use std::fs;

fn trainer() -> Trainer<kiln_models::CausalLm> {
    Trainer::new(tiny_lora(2, 0.0, 5), &device(), options(1, 1e-3, 10)).unwrap()
}

#[test]
fn a_fresh_run_refuses_a_used_directory_and_names_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("run");
    let first = RunDir::open(&dir, RunMode::Fresh).unwrap();
    assert!(dir.join("run.json").is_file());
    assert!(!first.resumed());
    fs::write(dir.join("metrics.jsonl"), "{\"step\":1}\n").unwrap();
    let err = RunDir::open(&dir, RunMode::Fresh).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TrainError::RunDir { .. }), "{msg}");
    assert!(msg.contains(&dir.display().to_string()), "{msg}");
    assert!(
        msg.contains("--resume") && msg.contains("--overwrite"),
        "{msg}"
    );
    // The refused run changed nothing.
    assert_eq!(
        fs::read_to_string(dir.join("metrics.jsonl")).unwrap(),
        "{\"step\":1}\n"
    );
    // Resume continues the same run; an empty directory is a fresh one.
    let again = RunDir::open(&dir, RunMode::Resume).unwrap();
    assert_eq!(again.id(), first.id());
    assert!(again.resumed());
    let empty = root.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let fresh = RunDir::open(&empty, RunMode::Fresh).unwrap();
    assert_ne!(fresh.id(), first.id());
    assert!(RunMode::from_flags(true, true).is_err());
}

#[test]
fn overwrite_replaces_a_kiln_run_and_never_a_foreign_directory() {
    let root = tempfile::tempdir().unwrap();
    let foreign = root.path().join("notes");
    fs::create_dir(&foreign).unwrap();
    fs::write(foreign.join("thesis.tex"), "precious").unwrap();
    for mode in [RunMode::Overwrite, RunMode::Resume, RunMode::Fresh] {
        let err = RunDir::open(&foreign, mode).unwrap_err();
        assert!(matches!(err, TrainError::RunDir { .. }), "{mode:?}: {err}");
    }
    assert_eq!(
        fs::read_to_string(foreign.join("thesis.tex")).unwrap(),
        "precious"
    );

    let dir = root.path().join("run");
    let old = RunDir::open(&dir, RunMode::Fresh).unwrap();
    fs::write(dir.join("metrics.jsonl"), "old run\n").unwrap();
    let new = RunDir::open(&dir, RunMode::Overwrite).unwrap();
    assert_ne!(new.id(), old.id());
    assert!(!dir.join("metrics.jsonl").exists());
    assert!(dir.join("run.json").is_file());
}

#[test]
fn resume_refuses_another_runs_checkpoint() {
    let _g = serial();
    let root = tempfile::tempdir().unwrap();
    let data: Vec<Batch> = vec![batch(0..2, 8)];
    let a = RunDir::open(&root.path().join("a"), RunMode::Fresh).unwrap();
    let b = RunDir::open(&root.path().join("b"), RunMode::Fresh).unwrap();
    let mut t = trainer();
    t.set_run_id(a.id());
    t.step(&data).unwrap();
    let ckpt = t.save_checkpoint(&a.checkpoint_dir(), 2).unwrap();
    assert_eq!(a.latest_checkpoint().unwrap(), Some(ckpt.clone()));
    let resumed =
        Trainer::resume(tiny_lora(2, 0.0, 5), &device(), options(1, 1e-3, 10), &ckpt).unwrap();
    assert_eq!(resumed.run_id(), Some(a.id()));
    // Run a's checkpoint copied under run b: b must not continue from it.
    let moved = b.checkpoint_dir().join(ckpt.file_name().unwrap());
    fs::create_dir_all(&moved).unwrap();
    for f in fs::read_dir(&ckpt).unwrap() {
        let f = f.unwrap();
        fs::copy(f.path(), moved.join(f.file_name())).unwrap();
    }
    let err = b.latest_checkpoint().unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(a.id()) && msg.contains(b.id()), "{msg}");
    assert!(msg.contains("step-00000001"), "{msg}");
}

#[test]
fn pruning_keeps_the_checkpoint_just_written() {
    let _g = serial();
    let root = tempfile::tempdir().unwrap();
    let mut t = trainer();
    t.state.step = 9;
    t.save_checkpoint(root.path(), 1).unwrap();
    // A lower step written later (a NaN stop names it): the newest write survives pruning.
    t.state.step = 3;
    let kept = t.save_checkpoint(root.path(), 1).unwrap();
    assert_eq!(list_checkpoints(root.path()).unwrap(), vec![kept.clone()]);
    assert!(kept.ends_with("step-00000003"));
    t.state.step = 4;
    let newer = t.save_checkpoint(root.path(), 2).unwrap();
    assert_eq!(list_checkpoints(root.path()).unwrap(), vec![kept, newer]);
}
