//! Weight clustering (issue 21, part 1a; not yet wired into a file format
//! or the engine): a group of weights replaced by a codebook of `k`
//! values and one index per weight. The codebook is fitted by 1-D k-means
//! (Lloyd's algorithm) started from an even grid over the group's range;
//! each weight takes its nearest entry. [`matvec`] is the lookup kernel's
//! reference: it reads the indices and the codebook as stored, never a
//! decoded matrix.

/// Codebook sizes a group may have: 4, 6 or 8 bits per index.
pub const SIZES: [usize; 3] = [16, 64, 256];

/// Lloyd iterations at most; a fit that moves no entry stops earlier.
const ITERATIONS: usize = 24;

/// One group's codebook: its entries in ascending order.
#[derive(Debug, Clone, PartialEq)]
pub struct Codebook {
    pub entries: Vec<f32>,
}

/// A group of weights as clustered: its codebook and each weight's index.
#[derive(Debug, Clone, PartialEq)]
pub struct Clustered {
    pub codebook: Codebook,
    pub indices: Vec<u8>,
}

impl Codebook {
    /// The codebook of at most `k` entries (`k` in [`SIZES`]) fitted to
    /// `values`: fewer when the group has fewer distinct values.
    ///
    /// # Panics
    /// When `k` is not one of [`SIZES`] (a caller's bug, not input).
    pub fn fit(values: &[f32], k: usize) -> Codebook {
        assert!(
            SIZES.contains(&k),
            "codebook size {k} is not one of {SIZES:?}"
        );
        let finite = values.iter().copied().filter(|v| v.is_finite());
        let (lo, hi) = finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        if lo > hi {
            return Codebook { entries: vec![0.0] };
        }
        if lo == hi {
            return Codebook { entries: vec![lo] };
        }
        let mut entries: Vec<f32> = (0..k)
            .map(|i| lo + (hi - lo) * i as f32 / (k - 1) as f32)
            .collect();
        let mut sums = vec![0f64; k];
        let mut counts = vec![0u32; k];
        for _ in 0..ITERATIONS {
            sums.iter_mut().for_each(|s| *s = 0.0);
            counts.iter_mut().for_each(|c| *c = 0);
            for &v in values.iter().filter(|v| v.is_finite()) {
                let i = nearest(&entries, v);
                sums[i] += v as f64;
                counts[i] += 1;
            }
            let mut moved = false;
            for i in 0..k {
                // An entry no weight chose stays where it is.
                if counts[i] > 0 {
                    let mean = (sums[i] / counts[i] as f64) as f32;
                    moved |= mean != entries[i];
                    entries[i] = mean;
                }
            }
            if !moved {
                break;
            }
        }
        // Means of sorted cells stay sorted; drop the entries no weight
        // uses, and duplicates.
        let used: Vec<f32> = entries
            .iter()
            .zip(&counts)
            .filter(|&(_, &c)| c > 0)
            .map(|(&e, _)| e)
            .collect();
        let mut entries = used;
        entries.dedup();
        Codebook { entries }
    }

    /// Each value's nearest entry (a non-finite value takes entry 0).
    pub fn encode(&self, values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .map(|&v| {
                if v.is_finite() {
                    nearest(&self.entries, v) as u8
                } else {
                    0
                }
            })
            .collect()
    }

    /// The values `indices` stand for.
    pub fn decode(&self, indices: &[u8]) -> Vec<f32> {
        indices.iter().map(|&i| self.entries[i as usize]).collect()
    }

    /// The largest error a finite value in `[lo, hi]` can take: the
    /// distance from the range's ends to the outer entries, or half the
    /// widest gap between neighbouring entries.
    pub fn bound(&self, lo: f32, hi: f32) -> f32 {
        let e = &self.entries;
        let gaps = e.windows(2).map(|w| (w[1] - w[0]) / 2.0);
        let ends = [e[0] - lo, hi - e[e.len() - 1]];
        gaps.chain(ends).fold(0.0, f32::max)
    }
}

/// `values` clustered with a codebook of at most `k` entries.
pub fn cluster(values: &[f32], k: usize) -> Clustered {
    let codebook = Codebook::fit(values, k);
    let indices = codebook.encode(values);
    Clustered { codebook, indices }
}

/// Index of the entry nearest `v` in ascending `entries` (the lower on a tie).
fn nearest(entries: &[f32], v: f32) -> usize {
    let above = entries.partition_point(|&e| e < v);
    match above {
        0 => 0,
        n if n == entries.len() => n - 1,
        n => {
            if v - entries[n - 1] <= entries[n] - v {
                n - 1
            } else {
                n
            }
        }
    }
}

/// `y = W·x` for a matrix of `rows` rows stored as one clustered group per
/// row: each product reads the row's indices and looks the weight up in
/// its codebook. The reference the vectorized kernel is checked against.
pub fn matvec(rows: &[Clustered], x: &[f32]) -> Vec<f32> {
    rows.iter()
        .map(|row| {
            let book = &row.codebook.entries;
            row.indices
                .iter()
                .zip(x)
                .map(|(&i, &xi)| book[i as usize] * xi)
                .sum()
        })
        .collect()
}

/// Bits per weight of `rows` groups of `cols` weights each with a
/// `k`-entry codebook of f16 entries per group.
pub fn bits_per_weight(k: usize, cols: usize) -> f64 {
    let index_bits = (k as f64).log2();
    index_bits + (16 * k) as f64 / cols as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn values() -> impl Strategy<Value = Vec<f32>> {
        prop::collection::vec(-4.0f32..4.0, 1..600)
    }

    proptest! {
        #[test]
        fn every_weight_is_within_the_bound_its_codebook_implies(
            v in values(),
            k in prop::sample::select(SIZES.to_vec()),
        ) {
            let c = cluster(&v, k);
            prop_assert!(c.codebook.entries.len() <= k);
            prop_assert!(c.codebook.entries.windows(2).all(|w| w[0] < w[1]));
            let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let bound = c.codebook.bound(lo, hi);
            for (w, d) in v.iter().zip(c.codebook.decode(&c.indices)) {
                prop_assert!((w - d).abs() <= bound + 1e-6, "{w} → {d}, bound {bound}");
            }
        }

        #[test]
        fn the_fit_is_no_worse_than_the_even_grid_it_starts_from(
            v in values(),
            k in prop::sample::select(SIZES.to_vec()),
        ) {
            let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mse = |book: &Codebook| {
                let d = book.decode(&book.encode(&v));
                v.iter().zip(d).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>()
            };
            let fitted = Codebook::fit(&v, k);
            if lo < hi {
                let grid = Codebook {
                    entries: (0..k).map(|i| lo + (hi - lo) * i as f32 / (k - 1) as f32).collect(),
                };
                prop_assert!(mse(&fitted) <= mse(&grid) * (1.0 + 1e-6) + 1e-9);
            }
        }

        #[test]
        fn the_lookup_product_equals_the_decoded_product(
            rows in prop::collection::vec(prop::collection::vec(-2.0f32..2.0, 48), 1..12),
            x in prop::collection::vec(-2.0f32..2.0, 48),
            k in prop::sample::select(SIZES.to_vec()),
        ) {
            let clustered: Vec<Clustered> = rows.iter().map(|r| cluster(r, k)).collect();
            let y = matvec(&clustered, &x);
            for (c, y) in clustered.iter().zip(y) {
                let decoded: f64 = c.codebook.decode(&c.indices).iter().zip(&x)
                    .map(|(&w, &xi)| w as f64 * xi as f64).sum();
                prop_assert!((y as f64 - decoded).abs() <= 1e-4 * (1.0 + decoded.abs()));
            }
        }
    }

    #[test]
    fn a_group_of_few_distinct_values_is_stored_exactly() {
        let v = [0.5f32, -1.0, 0.5, 2.0, -1.0];
        let c = cluster(&v, 16);
        assert_eq!(c.codebook.entries, [-1.0, 0.5, 2.0]);
        assert_eq!(c.codebook.decode(&c.indices), v);
        assert_eq!(cluster(&[3.0; 4], 16).codebook.entries, [3.0]);
        assert_eq!(cluster(&[f32::NAN], 16).indices, [0]);
    }

    #[test]
    fn bits_per_weight_count_the_codebook() {
        // k = 16 per row of 576: 4 bits and 16·16/576 of codebook.
        assert!((bits_per_weight(16, 576) - 4.444).abs() < 1e-3);
        assert!((bits_per_weight(256, 4096) - 9.0).abs() < 1e-9);
    }
}
