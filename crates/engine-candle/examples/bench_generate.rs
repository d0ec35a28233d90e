//! Prompt and decode speed of the decoder backend, measured the way llama-bench
//! does: one prompt of N tokens in one forward pass, then M single-token steps
//! fed the text's next tokens (a step's work does not depend on the token).
//!
//!   bench_generate MODEL TEXT_FILE THREADS PROMPT_TOKENS GEN_TOKENS
//!
//! MODEL is a decoder GGUF file or checkpoint directory.
//!
//! Prints one JSON line. Used by scripts/bench.sh.

use std::time::Instant;

use modelship_engine::GenerateBackend;
use modelship_engine_candle::{Device, OpenModel, open};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, text, threads, n_prompt, n_gen] = args.as_slice() else {
        return Err("usage: bench_generate MODEL TEXT THREADS PROMPT_TOKENS GEN_TOKENS".into());
    };
    let (n_prompt, n_gen): (usize, usize) = (n_prompt.parse()?, n_gen.parse()?);
    // SAFETY: single-threaded here; read by candle when its pool starts.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", threads);
        std::env::set_var("CANDLE_NUM_THREADS", "1"); // as `modelship serve` does
    }
    rayon_init(threads.parse()?);
    let OpenModel::Generate {
        tokenizer, backend, ..
    } = open(model.as_ref(), &Device::Cpu, n_prompt + n_gen + 1)?
    else {
        return Err(format!("{model} is not a decoder").into());
    };
    let all = tokenizer.encode(&std::fs::read_to_string(text)?, false)?;
    let (ids, following) = (&all[..n_prompt], &all[n_prompt..n_prompt + n_gen]);

    // Warm-up pass (page in the weights), not timed.
    let mut warm = backend.new_sequence();
    backend.forward(&mut warm, &ids[..8])?;

    let mut seq = backend.new_sequence();
    let t = Instant::now();
    backend.forward(&mut seq, ids)?;
    let prompt_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for &next in following {
        backend.forward(&mut seq, &[next])?;
    }
    let decode_s = t.elapsed().as_secs_f64();
    println!(
        "{{\"prompt_tokens\": {}, \"prompt_tps\": {:.2}, \"gen_tokens\": {n_gen}, \"decode_tps\": {:.2}}}",
        ids.len(),
        ids.len() as f64 / prompt_s,
        n_gen as f64 / decode_s
    );
    Ok(())
}

fn rayon_init(threads: usize) {
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
}
