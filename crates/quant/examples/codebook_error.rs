//! Relative RMS error of a model's matrices under per-row k=16 codebooks
//! against q4_0, q4_1 and q8_0 at similar bits: the first measurement of
//! issue 21's weight clustering (no file format or kernel yet).
//!   cargo run --release -p modelship-quant --example codebook_error -- MODEL

use candle_core::quantized::GgmlDType;
use modelship_quant::codebook::{bits_per_weight, cluster};
use modelship_quant::{Source, encode};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: codebook_error MODEL")?;
    let src = Source::open(std::path::Path::new(&path))?;
    let types = [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0];
    // Squared error per scheme, and the weights' own sum of squares.
    let mut err = [0f64; 4];
    let (mut norm, mut weights, mut bits16) = (0f64, 0u64, 0f64);
    for t in src.tensors.iter().filter(|t| t.shape.len() == 2) {
        let &[rows, cols] = t.shape.as_slice() else {
            continue;
        };
        if rows < 64 || cols % 32 != 0 || !t.name.contains("blk.") && !t.name.contains("layer") {
            continue;
        }
        let w = src.floats(t, Vec::new())?;
        norm += w.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
        weights += w.len() as u64;
        bits16 += bits_per_weight(16, cols) * w.len() as f64;
        for (i, &dtype) in types.iter().enumerate() {
            let raw = encode::encode(dtype, &w, cols)?;
            let mut back = Vec::new();
            encode::decode_into(dtype, &raw, cols, &mut back)?;
            err[i] += w
                .iter()
                .zip(&back)
                .map(|(&a, &b)| ((a - b) as f64).powi(2))
                .sum::<f64>();
        }
        for row in w.chunks(cols) {
            let c = cluster(row, 16);
            let back = c.codebook.decode(&c.indices);
            err[3] += row
                .iter()
                .zip(&back)
                .map(|(&a, &b)| ((a - b) as f64).powi(2))
                .sum::<f64>();
        }
    }
    println!("{path}: {weights} weights in layer matrices");
    println!("| scheme | bits/weight | relative RMS error |");
    println!("|---|---:|---:|");
    let rel = |e: f64| (e / norm).sqrt();
    for (name, bpw, e) in [
        ("q4_0", 4.5, err[0]),
        ("q4_1", 5.0, err[1]),
        (
            "codebook k=16 per row (f16 entries)",
            bits16 / weights as f64,
            err[3],
        ),
        ("q8_0", 8.5, err[2]),
    ] {
        println!("| {name} | {bpw:.2} | {:.4} |", rel(e));
    }
    Ok(())
}
