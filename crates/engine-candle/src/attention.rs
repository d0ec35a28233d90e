//! Softmax attention on the CPU, reading the KV cache's rows in place: for
//! each query, the scores of the keys it sees, their softmax (rounded
//! through f16, as llama.cpp's f16 matmul of probabilities rounds them), and
//! the weighted sum of the values. candle's path (two batched matmuls, a
//! mask added, a softmax) packed its operands for every decode step's
//! one-row products: ~7% of a Gemma 3 decode step.

use candle_core::{CpuStorage, Result, Storage, Tensor};
use rayon::prelude::*;

use crate::gated::exp;

/// How attention scores are shaped before the softmax.
#[derive(Clone, Copy)]
pub(crate) struct Scoring {
    pub(crate) scale: f32,
    pub(crate) softcap: Option<f32>,
}

/// Whether a query at position `p` does not see the key at position `j`:
/// a later one, or one `window` or more behind it (llama.cpp's standard
/// sliding window).
pub(crate) fn key_hidden(p: usize, j: usize, window: Option<usize>) -> bool {
    j > p || window.is_some_and(|w| p - j >= w)
}

/// Attention of queries (kv_heads, group, len, hd) at positions
/// `first_query..` over keys and values (kv_heads, total, hd) of positions
/// `first_key..`; returns (kv_heads, group, len, hd).
pub(crate) fn attend_cpu(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (first_query, first_key): (usize, usize),
    window: Option<usize>,
    scoring: Scoring,
) -> Result<Tensor> {
    let (kv_heads, group, len, hd) = q.dims4()?;
    let total = k.dim(1)?;
    let queries = q.flatten_all()?.to_vec1::<f32>()?;
    let (k_storage, k_layout) = k.storage_and_layout();
    let (v_storage, v_layout) = v.storage_and_layout();
    let keys = Rows::of(&k_storage, k_layout, hd)?;
    let values = Rows::of(&v_storage, v_layout, hd)?;
    let mut out = vec![0f32; queries.len()];
    // Tasks of at least ~64k multiply-adds: a decode step's few heads stay
    // on one thread unless their keys are many.
    let min_rows = (65_536 / (total * hd).max(1)).max(1);
    out.par_chunks_mut(hd)
        .zip(queries.par_chunks(hd))
        .enumerate()
        .with_min_len(min_rows)
        .for_each_init(Vec::new, |scores, (row, (out, q))| {
            let head = row / (group * len);
            let p = first_query + row % len;
            // The keys this query sees, as rows of the cache.
            let seen_from = window.map_or(0, |w| (p + 1).saturating_sub(w));
            debug_assert!(
                seen_from >= first_key,
                "a key position {p} sees was dropped"
            );
            let from = seen_from.max(first_key);
            let to = (p + 1).min(first_key + total);
            debug_assert!((from..to).all(|j| !key_hidden(p, j, window)));
            scores.clear();
            scores.extend((from..to).map(|j| {
                let s = dot(q, keys.row(head, j - first_key)) * scoring.scale;
                match scoring.softcap {
                    Some(c) => (s / c).tanh() * c,
                    None => s,
                }
            }));
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = exp(*s - max);
                sum += *s;
            }
            for (j, &e) in (from..to).zip(scores.iter()) {
                let p = half::f16::from_f32(e / sum).to_f32();
                for (o, &x) in out.iter_mut().zip(values.row(head, j - first_key)) {
                    *o += p * x;
                }
            }
        });
    Tensor::from_vec(out, (kv_heads, group, len, hd), q.device())
}

/// Rows of `hd` values per head of a (heads, rows, hd) f32 tensor on the
/// CPU, read where they are (a narrowed view of the cache).
struct Rows<'a> {
    data: &'a [f32],
    start: usize,
    head_stride: usize,
    hd: usize,
}

impl<'a> Rows<'a> {
    fn of(storage: &'a Storage, layout: &candle_core::Layout, hd: usize) -> Result<Self> {
        let Storage::Cpu(CpuStorage::F32(data)) = storage else {
            candle_core::bail!("CPU attention reads f32 tensors on the CPU");
        };
        let stride = layout.stride();
        if stride.len() != 3 || stride[1] != hd || stride[2] != 1 {
            candle_core::bail!("CPU attention reads rows of {hd} values, not strides {stride:?}");
        }
        Ok(Self {
            data,
            start: layout.start_offset(),
            head_stride: stride[0],
            hd,
        })
    }

    fn row(&self, head: usize, row: usize) -> &'a [f32] {
        let at = self.start + head * self.head_stride + row * self.hd;
        &self.data[at..at + self.hd]
    }
}

/// `a · b` in eight independent lanes (so the compiler vectorizes the sum).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}
