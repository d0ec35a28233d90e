//! Weights our kernels read are used where they lie in the model file: after
//! loading and a first forward pass, the file's bytes are resident as file
//! pages (shared through the page cache), not as a copy in the process's own
//! memory. One test, so no other test's allocations land in between.

use std::path::Path;

use modelship_engine::GenerateBackend;
use modelship_engine_candle::{Device, OpenModel, open};

/// `RssFile` and `RssAnon` of this process, in bytes.
fn resident() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{key} missing from /proc/self/status"))
            * 1024
    };
    (kib("RssFile:"), kib("RssAnon:"))
}

/// Bytes of the weight files at `path` (a GGUF file, or a checkpoint's
/// safetensors).
fn weight_bytes(path: &Path) -> u64 {
    if path.is_file() {
        return path.metadata().unwrap().len();
    }
    std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .map(|p| p.metadata().unwrap().len())
        .sum()
}

/// Loads `path`, runs a prompt, and returns how much resident file and
/// anonymous memory grew, as shares of the weight files' size.
fn growth(path: &Path) -> (f64, f64) {
    let before = resident();
    let OpenModel::Generate { backend, .. } = open(path, &Device::Cpu, 256).unwrap() else {
        panic!("{} is a generative model", path.display())
    };
    let mut seq = backend.new_sequence();
    backend
        .forward(&mut seq, &[1, 2, 3, 4, 5, 6, 7, 8])
        .unwrap();
    let after = resident();
    let size = weight_bytes(path) as f64;
    let share = |a: u64, b: u64| a.saturating_sub(b) as f64 / size;
    let g = (share(after.0, before.0), share(after.1, before.1));
    eprintln!(
        "{}: file pages +{:.0}%, own memory +{:.0}% of {:.0} MiB of weights",
        path.display(),
        g.0 * 100.0,
        g.1 * 100.0,
        size / (1 << 20) as f64
    );
    drop(backend);
    g
}

#[test]
fn weights_read_in_place_stay_in_the_file() {
    // A bf16 checkpoint in shards (every matrix, the tied token table
    // included, read as stored; only the f32 norms are copied) and a Q4_1
    // GGUF (all matrices Q4_1 or Q8_0).
    for path in [
        modelship_testkit::smollm_checkpoint_bf16(),
        modelship_testkit::smollm(),
    ] {
        let (file, own) = growth(&path);
        assert!(
            file > 0.9,
            "{}: only {:.0}% of the weights are resident from the file",
            path.display(),
            file * 100.0
        );
        assert!(
            own < 0.2,
            "{}: the process's own memory grew by {:.0}% of the weights: they were copied",
            path.display(),
            own * 100.0
        );
    }
}
