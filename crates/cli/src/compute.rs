//! The compute thread pool every command that runs tensors shares.

use anyhow::Context;

use crate::Failure;

/// Sizes the global rayon pool (and candle's) to `threads`, all cores by
/// default; returns the count.
pub fn init_threads(threads: Option<usize>) -> Result<usize, Failure> {
    let threads =
        threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        return Err(Failure::Config(anyhow::anyhow!(
            "invalid `--threads`: must be at least 1"
        )));
    }
    // candle sizes its matmul parallelism from RAYON_NUM_THREADS, and runs
    // elementwise ops on a second, spinning pool of CANDLE_NUM_THREADS - 1
    // workers that fights the backends' rayon pools for the cores. One thread
    // for that pool keeps those ops on the (pool) thread that runs the forward
    // pass: +20% embedding throughput on 2 cores (docs/benchmarks.md).
    // SAFETY: called first thing in a command, before any other thread
    // exists; nothing reads the environment concurrently.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    bound_malloc_arenas();
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("cannot start the compute thread pool")?;
    Ok(threads)
}

/// One malloc arena for the whole process. glibc gives each thread that
/// allocates under contention an arena of its own and never hands memory
/// freed in one to another, so a pass's activations freed on one compute
/// thread were not reused by the next pass allocating on another: the same
/// SmolLM2 load peaked anywhere from 889 to 1,173 MiB. With one arena the
/// peak is a property of the workload (869–872 MiB in five runs), which is
/// what the planner estimates; serving speed did not move measurably
/// (docs/benchmarks.md, issue 4).
fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before the
    // compute threads start. A failure (0) leaves glibc's default in place.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// This process's peak resident memory (VmHWM), when the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
