//! Structural edits of a model, planned from its tensor list and metadata
//! alone: whole layers dropped (a student for distillation), FFN channels
//! and attention heads removed (structured pruning). The result is an
//! ordinary, smaller model of the same architecture: every kept layer keeps
//! the same counts, so the metadata's scalar `feed_forward_length` and
//! `attention.head_count` still describe it, and any GGUF reader loads it.
//!
//! A removed FFN channel `j` is row `j` of `ffn_up`/`ffn_gate` (and their
//! biases) and column `j` of `ffn_down`; a removed head `h` is its
//! `head_dim` rows of `attn_q` (and of `attn_k`/`attn_v` when no query head
//! reads its KV head any more) and its columns of `attn_output`.

use candle_core::quantized::gguf_file::Value;

/// What to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The layers kept, in order: the `i`-th becomes layer `i`.
    pub layers: Vec<LayerCut>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerCut {
    /// Its index in the source.
    pub source: usize,
    /// FFN channels kept, ascending; `None` keeps them all.
    pub ffn: Option<Vec<usize>>,
    /// Query heads kept, ascending; `None` keeps them all.
    pub heads: Option<Vec<usize>>,
}

impl Cut {
    /// Only these layers, whole.
    pub fn layers(kept: impl IntoIterator<Item = usize>) -> Self {
        Self {
            layers: kept
                .into_iter()
                .map(|source| LayerCut {
                    source,
                    ffn: None,
                    heads: None,
                })
                .collect(),
        }
    }
}

/// `n` of `layers` indices spread evenly, the first and the last among
/// them (DistilBERT's every other layer, for half of an even count).
pub fn spread(layers: usize, n: usize) -> Vec<usize> {
    match n {
        0 => Vec::new(),
        1 => vec![0],
        _ if n >= layers => (0..layers).collect(),
        _ => (0..n)
            .map(|i| (i * (layers - 1) + (n - 1) / 2) / (n - 1))
            .collect(),
    }
}

/// The counts a cut is planned against, from the metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub layers: usize,
    pub feed_forward: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// One tensor of the result: a tensor of the source, renamed, with only
/// some of its rows (the first dimension) and columns (the last) kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub name: String,
    pub from: String,
    pub shape: Vec<usize>,
    pub rows: Option<Vec<usize>>,
    pub cols: Option<Vec<usize>>,
}

/// The edited model: its tensors in source order, and the metadata keys
/// whose values change.
#[derive(Debug, Clone)]
pub struct Plan {
    pub pieces: Vec<Piece>,
    pub metadata: Vec<(String, Value)>,
    pub shape: Shape,
}

/// The counts of `arch`'s metadata (`<arch>.block_count`, …).
pub fn shape(arch: &str, metadata: &[(String, Value)]) -> Result<Shape, String> {
    let get = |key: &str| -> Result<Option<usize>, String> {
        let key = format!("{arch}.{key}");
        match metadata.iter().find(|(k, _)| *k == key) {
            None => Ok(None),
            Some((_, v)) => v.to_u32().map(|v| Some(v as usize)).map_err(|_| {
                format!("metadata `{key}` is not one count (per-layer counts are not cut)")
            }),
        }
    };
    let need = |key: &str| get(key)?.ok_or_else(|| format!("metadata `{arch}.{key}` is missing"));
    let heads = need("attention.head_count")?;
    let width = need("embedding_length")?;
    if heads == 0 {
        return Err(format!("metadata `{arch}.attention.head_count` is 0"));
    }
    let kv_heads = get("attention.head_count_kv")?.unwrap_or(heads);
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(format!(
            "{heads} query heads cannot share {kv_heads} KV heads evenly"
        ));
    }
    Ok(Shape {
        layers: need("block_count")?,
        feed_forward: need("feed_forward_length")?,
        heads,
        kv_heads,
        head_dim: get("attention.key_length")?.unwrap_or(width / heads),
    })
}

/// Plans `cut` over a model of `arch` with these tensors (name, shape rows
/// first) and counts. Refuses what would not be an ordinary model: counts
/// that differ between layers, an index out of range, a tensor whose shape
/// does not match the counts, and architectures whose layers are not
/// interchangeable (Gemma's alternate local and global attention by layer
/// index, and scale by width over heads; MPNet's position bias is shared by
/// every layer's heads).
pub fn plan(
    arch: &str,
    tensors: &[(String, Vec<usize>)],
    shape: Shape,
    cut: &Cut,
) -> Result<Plan, String> {
    if arch.starts_with("gemma") {
        return Err(format!(
            "`{arch}` models are not cut: their layers are not interchangeable"
        ));
    }
    if cut.layers.is_empty() {
        return Err("the cut keeps no layer".into());
    }
    let mut last = None;
    for l in &cut.layers {
        if l.source >= shape.layers {
            return Err(format!(
                "layer {} is past the model's {}",
                l.source, shape.layers
            ));
        }
        if last.is_some_and(|p| p >= l.source) {
            return Err("kept layers must be listed once each, in order".into());
        }
        last = Some(l.source);
    }
    let ff = uniform(
        cut.layers.iter().map(|l| l.ffn.as_deref()),
        shape.feed_forward,
        "FFN channels",
    )?;
    let q = uniform(
        cut.layers.iter().map(|l| l.heads.as_deref()),
        shape.heads,
        "heads",
    )?;
    let heads_cut = cut.layers.iter().any(|l| l.heads.is_some());
    if heads_cut && arch == "mpnet" {
        return Err(
            "MPNet's heads are not cut: one position bias serves every layer's heads".into(),
        );
    }
    if heads_cut && tensors.iter().any(|(n, _)| n.ends_with(".attn_qkv.weight")) {
        return Err("heads are not cut from a fused `attn_qkv` projection".into());
    }
    let group = shape.heads / shape.kv_heads;
    // Per kept layer, the KV heads its kept query heads read; every kept KV
    // head must keep as many query heads as the others.
    let mut kv_kept = Vec::with_capacity(cut.layers.len());
    for l in &cut.layers {
        let Some(heads) = &l.heads else {
            kv_kept.push(None);
            continue;
        };
        let mut kv: Vec<(usize, usize)> = Vec::new();
        for &h in heads {
            match kv.last_mut() {
                Some((g, n)) if *g == h / group => *n += 1,
                _ => kv.push((h / group, 1)),
            }
        }
        if kv.iter().any(|&(_, n)| n != kv[0].1) {
            return Err(format!(
                "layer {}: every KV head must keep as many of its {group} query heads as the others",
                l.source
            ));
        }
        kv_kept.push(Some(kv.into_iter().map(|(g, _)| g).collect::<Vec<_>>()));
    }
    let kv = uniform(
        kv_kept.iter().map(|k| k.as_deref()),
        shape.kv_heads,
        "KV heads",
    )?;

    let by_source: std::collections::HashMap<usize, (usize, &LayerCut, Option<&Vec<usize>>)> = cut
        .layers
        .iter()
        .zip(&kv_kept)
        .enumerate()
        .map(|(i, (l, k))| (l.source, (i, l, k.as_ref())))
        .collect();
    let hd = shape.head_dim;
    let blocks = |heads: &[usize]| -> Vec<usize> {
        heads.iter().flat_map(|&h| h * hd..(h + 1) * hd).collect()
    };
    let mut pieces = Vec::new();
    for (name, dims) in tensors {
        let Some((layer, rest)) = name
            .strip_prefix("blk.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(l, rest)| Some((l.parse::<usize>().ok()?, rest)))
        else {
            pieces.push(whole(name, name, dims));
            continue;
        };
        let Some(&(new, l, kv)) = by_source.get(&layer) else {
            continue;
        };
        let renamed = format!("blk.{new}.{rest}");
        let (stem, kind) = rest.rsplit_once('.').unwrap_or((rest, ""));
        let ffn = l.ffn.as_ref();
        // The output projections' biases are in the stream's width: whole.
        let (rows, cols, expect) = match stem {
            "ffn_down" | "attn_output" if kind != "weight" => {
                pieces.push(whole(&renamed, name, dims));
                continue;
            }
            "ffn_up" | "ffn_gate" if ffn.is_some() => {
                let ffn = ffn.expect("checked");
                // Phi-3 stacks gate and up in one `ffn_up`, gate first.
                if dims.first() == Some(&(2 * shape.feed_forward)) && stem == "ffn_up" {
                    let both = ffn
                        .iter()
                        .copied()
                        .chain(ffn.iter().map(|j| j + shape.feed_forward));
                    (Some(both.collect()), None, (0, 2 * shape.feed_forward))
                } else {
                    (Some(ffn.clone()), None, (0, shape.feed_forward))
                }
            }
            "ffn_down" if ffn.is_some() => (None, ffn.cloned(), (1, shape.feed_forward)),
            "attn_q" if l.heads.is_some() => (
                Some(blocks(l.heads.as_ref().expect("checked"))),
                None,
                (0, shape.heads * hd),
            ),
            "attn_k" | "attn_v" if kv.is_some() => (
                Some(blocks(kv.expect("checked"))),
                None,
                (0, shape.kv_heads * hd),
            ),
            "attn_output" if l.heads.is_some() => (
                None,
                Some(blocks(l.heads.as_ref().expect("checked"))),
                (1, shape.heads * hd),
            ),
            _ => {
                pieces.push(whole(&renamed, name, dims));
                continue;
            }
        };
        // Rows are the first dimension, columns the last (of a matrix).
        let dim = if expect.0 == 0 {
            dims.first()
        } else {
            dims.get(1)
        };
        if dim != Some(&expect.1) || dims.len() > 2 || (expect.0 == 1 && dims.len() != 2) {
            return Err(format!(
                "tensor `{name}` has shape {dims:?}, not the {} its counts imply in dimension {}",
                expect.1, expect.0
            ));
        }
        let mut shape_out = dims.clone();
        if let Some(r) = &rows {
            shape_out[0] = r.len();
        }
        if let Some(c) = &cols {
            shape_out[1] = c.len();
        }
        pieces.push(Piece {
            name: renamed,
            from: name.clone(),
            shape: shape_out,
            rows,
            cols,
        });
    }
    let out = Shape {
        layers: cut.layers.len(),
        feed_forward: ff,
        heads: q,
        kv_heads: kv,
        head_dim: hd,
    };
    let key = |k: &str| format!("{arch}.{k}");
    let u = |v: usize| Value::U32(v as u32);
    let mut metadata = vec![
        (key("block_count"), u(out.layers)),
        (key("feed_forward_length"), u(out.feed_forward)),
    ];
    if heads_cut {
        metadata.extend([
            (key("attention.head_count"), u(out.heads)),
            (key("attention.head_count_kv"), u(out.kv_heads)),
            (key("attention.key_length"), u(hd)),
            (key("attention.value_length"), u(hd)),
        ]);
    }
    Ok(Plan {
        pieces,
        metadata,
        shape: out,
    })
}

fn whole(name: &str, from: &str, dims: &[usize]) -> Piece {
    Piece {
        name: name.to_owned(),
        from: from.to_owned(),
        shape: dims.to_vec(),
        rows: None,
        cols: None,
    }
}

/// The count every layer keeps of `what` (`all` when none is cut): each
/// list ascending, within `all`, non-empty, and of one length across layers.
fn uniform<'a>(
    lists: impl Iterator<Item = Option<&'a [usize]>>,
    all: usize,
    what: &str,
) -> Result<usize, String> {
    let mut count = None;
    for list in lists {
        let n = match list {
            None => all,
            Some(l) => {
                if l.is_empty() {
                    return Err(format!("a layer keeps no {what}"));
                }
                if l.windows(2).any(|w| w[0] >= w[1]) || l.last().is_some_and(|&i| i >= all) {
                    return Err(format!("kept {what} must be ascending indices below {all}"));
                }
                l.len()
            }
        };
        if count.is_some_and(|c| c != n) {
            return Err(format!(
                "every layer must keep as many {what} ({} and {n} here)",
                count.unwrap_or(0)
            ));
        }
        count = Some(n);
    }
    Ok(count.unwrap_or(all))
}

/// `data` (`cols` per row) with only the listed rows and columns.
pub fn select(
    data: &[f32],
    cols: usize,
    rows: Option<&[usize]>,
    keep: Option<&[usize]>,
) -> Vec<f32> {
    let n_rows = data.len() / cols.max(1);
    let all_rows: Vec<usize>;
    let rows = match rows {
        Some(r) => r,
        None => {
            all_rows = (0..n_rows).collect();
            &all_rows
        }
    };
    let mut out = Vec::with_capacity(rows.len() * keep.map_or(cols, <[usize]>::len));
    for &r in rows {
        let row = &data[r * cols..(r + 1) * cols];
        match keep {
            None => out.extend_from_slice(row),
            Some(k) => out.extend(k.iter().map(|&c| row[c])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama() -> (Vec<(String, Vec<usize>)>, Shape) {
        // Width 8, 4 query heads of 2 over 2 KV heads, FFN 6, 2 layers.
        let mut t = vec![("token_embd.weight".to_string(), vec![10, 8])];
        for l in 0..2 {
            for (n, s) in [
                ("attn_norm.weight", vec![8]),
                ("attn_q.weight", vec![8, 8]),
                ("attn_k.weight", vec![4, 8]),
                ("attn_v.weight", vec![4, 8]),
                ("attn_output.weight", vec![8, 8]),
                ("ffn_gate.weight", vec![6, 8]),
                ("ffn_up.weight", vec![6, 8]),
                ("ffn_down.weight", vec![8, 6]),
                ("ffn_down.bias", vec![8]),
                ("attn_output.bias", vec![8]),
                ("attn_q.bias", vec![8]),
            ] {
                t.push((format!("blk.{l}.{n}"), s));
            }
        }
        let shape = Shape {
            layers: 2,
            feed_forward: 6,
            heads: 4,
            kv_heads: 2,
            head_dim: 2,
        };
        (t, shape)
    }

    fn count(p: &Plan, key: &str) -> Option<u32> {
        p.metadata
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.to_u32().ok())
    }

    fn piece<'a>(p: &'a Plan, name: &str) -> &'a Piece {
        p.pieces.iter().find(|x| x.name == name).unwrap()
    }

    #[test]
    fn dropping_layers_renumbers_the_rest() {
        let (t, s) = llama();
        let p = plan("llama", &t, s, &Cut::layers([1])).unwrap();
        assert_eq!(piece(&p, "blk.0.attn_q.weight").from, "blk.1.attn_q.weight");
        assert!(p.pieces.iter().all(|x| !x.name.starts_with("blk.1.")));
        assert_eq!(p.pieces.len(), 1 + 11);
        assert_eq!(count(&p, "llama.block_count"), Some(1));
    }

    #[test]
    fn channels_and_heads_select_rows_and_columns() {
        let (t, s) = llama();
        let cut = Cut {
            layers: (0..2)
                .map(|source| LayerCut {
                    source,
                    ffn: Some(vec![0, 2, 5]),
                    // One query head of each KV head: both KV heads stay.
                    heads: Some(if source == 0 { vec![0, 3] } else { vec![1, 2] }),
                })
                .collect(),
        };
        let p = plan("llama", &t, s, &cut).unwrap();
        let up = piece(&p, "blk.0.ffn_up.weight");
        assert_eq!(
            (up.shape.clone(), up.rows.clone()),
            (vec![3, 8], Some(vec![0, 2, 5]))
        );
        let down = piece(&p, "blk.0.ffn_down.weight");
        assert_eq!(
            (down.shape.clone(), down.cols.clone()),
            (vec![8, 3], Some(vec![0, 2, 5]))
        );
        assert_eq!(
            piece(&p, "blk.0.attn_q.weight").rows,
            Some(vec![0, 1, 6, 7])
        );
        assert_eq!(
            piece(&p, "blk.1.attn_output.weight").cols,
            Some(vec![2, 3, 4, 5])
        );
        assert_eq!(
            piece(&p, "blk.0.attn_k.weight").rows,
            Some(vec![0, 1, 2, 3])
        );
        assert_eq!(p.shape.heads, 2);
        assert_eq!(p.shape.kv_heads, 2);
        // Both query heads of KV head 1: KV head 0 goes.
        let cut = Cut {
            layers: vec![LayerCut {
                source: 0,
                ffn: None,
                heads: Some(vec![2, 3]),
            }],
        };
        let p = plan("llama", &t, s, &cut).unwrap();
        assert_eq!(piece(&p, "blk.0.attn_v.weight").rows, Some(vec![2, 3]));
        assert_eq!(piece(&p, "blk.0.attn_v.weight").shape, [2, 8]);
        assert_eq!(count(&p, "llama.attention.head_count_kv"), Some(1));
        assert_eq!(count(&p, "llama.attention.key_length"), Some(2));
    }

    #[test]
    fn cuts_that_are_not_an_ordinary_model_are_refused() {
        let (t, s) = llama();
        let one = |ffn: Option<Vec<usize>>, heads: Option<Vec<usize>>| Cut {
            layers: vec![LayerCut {
                source: 0,
                ffn,
                heads,
            }],
        };
        let refused = |arch: &str, cut: Cut| plan(arch, &t, s, &cut).unwrap_err();
        assert!(refused("llama", Cut::layers([1, 0])).contains("in order"));
        assert!(refused("llama", Cut::layers([2])).contains("past"));
        assert!(refused("llama", Cut::layers([])).contains("no layer"));
        assert!(refused("gemma3", Cut::layers([0])).contains("interchangeable"));
        assert!(refused("llama", one(Some(vec![]), None)).contains("no FFN"));
        assert!(refused("llama", one(Some(vec![3, 1]), None)).contains("ascending"));
        assert!(refused("llama", one(Some(vec![6]), None)).contains("below 6"));
        // KV head 0 keeps two query heads, KV head 1 one.
        assert!(refused("llama", one(None, Some(vec![0, 1, 2]))).contains("as many"));
        let uneven = Cut {
            layers: vec![
                LayerCut {
                    source: 0,
                    ffn: Some(vec![0]),
                    heads: None,
                },
                LayerCut {
                    source: 1,
                    ffn: Some(vec![0, 1]),
                    heads: None,
                },
            ],
        };
        assert!(refused("llama", uneven).contains("every layer"));
        assert!(refused("mpnet", one(None, Some(vec![0, 2]))).contains("MPNet"));
        let mut bad = t.clone();
        bad[6].1 = vec![5, 8]; // blk.0.ffn_gate
        assert!(
            plan("llama", &bad, s, &one(Some(vec![0]), None))
                .unwrap_err()
                .contains("blk.0.ffn_gate")
        );
    }

    #[test]
    fn spread_keeps_the_ends_and_spaces_the_rest() {
        assert_eq!(spread(6, 4), [0, 2, 3, 5]);
        assert_eq!(spread(6, 3), [0, 3, 5]);
        assert_eq!(spread(6, 6), [0, 1, 2, 3, 4, 5]);
        assert_eq!(spread(6, 9), [0, 1, 2, 3, 4, 5]);
        assert_eq!(spread(6, 1), [0]);
        for n in 2..30 {
            let s = spread(30, n);
            assert_eq!((s.len(), s[0], s[n - 1]), (n, 0, 29));
            assert!(s.windows(2).all(|w| w[0] < w[1]), "{s:?}");
        }
    }

    #[test]
    fn select_keeps_rows_then_columns() {
        let data: Vec<f32> = (0..12).map(|v| v as f32).collect(); // 3 × 4
        assert_eq!(
            select(&data, 4, Some(&[2, 0]), Some(&[1, 3])),
            [9.0, 11.0, 1.0, 3.0]
        );
        assert_eq!(select(&data, 4, None, Some(&[0])), [0.0, 4.0, 8.0]);
        assert_eq!(select(&data, 4, Some(&[1]), None), [4.0, 5.0, 6.0, 7.0]);
    }
}
