//! A look inside a forward pass at the two places structured pruning cuts:
//! each FFN channel's activation and each attention head's output, before
//! the projection that sums them into the residual stream. [`Activity`]
//! records what flows there (the importance of a channel or head follows
//! from it and the projection's weights); [`Mask`] zeroes chosen channels
//! and heads, which is what removing them from the matrices computes.

use candle_core::{DType, Result, Tensor};

/// Called once per layer by `EncoderBackend::encode_probed` and
/// `DecoderBackend::score_probed`; what a hook returns continues the pass.
pub trait Probe: Send {
    /// Layer `layer`'s FFN activations, (tokens, feed_forward), just before
    /// the down projection.
    fn ffn(&mut self, layer: usize, a: Tensor) -> Result<Tensor>;
    /// Layer `layer`'s attention heads' outputs, (tokens, heads · head_dim),
    /// head by head, just before the output projection.
    fn heads(&mut self, layer: usize, ctx: Tensor) -> Result<Tensor>;
}

/// Sums of what reached each layer's projections, over every token seen.
#[derive(Debug, Clone, Default)]
pub struct Activity {
    pub head_dim: usize,
    /// Per layer, per FFN channel: Σ a².
    pub ffn: Vec<Vec<f64>>,
    /// Per layer, per head: the Gram matrix Σ c cᵀ of its output `c`
    /// (head_dim × head_dim, row-major), from which the energy of the head's
    /// contribution through any output projection follows exactly.
    pub heads: Vec<Vec<Vec<f64>>>,
    /// Tokens seen, counted at layer 0's FFN.
    pub tokens: usize,
}

impl Activity {
    pub fn new(head_dim: usize) -> Self {
        Self {
            head_dim,
            ..Self::default()
        }
    }
}

fn slot<T: Default>(v: &mut Vec<T>, i: usize) -> &mut T {
    if v.len() <= i {
        v.resize_with(i + 1, T::default);
    }
    &mut v[i]
}

fn add(into: &mut Vec<f64>, values: &[f32]) {
    if into.is_empty() {
        into.resize(values.len(), 0.0);
    }
    for (s, v) in into.iter_mut().zip(values) {
        *s += f64::from(*v);
    }
}

impl Probe for Activity {
    fn ffn(&mut self, layer: usize, a: Tensor) -> Result<Tensor> {
        let squares = a.to_dtype(DType::F32)?.sqr()?.sum(0)?.to_vec1::<f32>()?;
        add(slot(&mut self.ffn, layer), &squares);
        if layer == 0 {
            self.tokens += a.dim(0)?;
        }
        Ok(a)
    }

    fn heads(&mut self, layer: usize, ctx: Tensor) -> Result<Tensor> {
        let (n, width) = ctx.dims2()?;
        let d = self.head_dim;
        if d == 0 || !width.is_multiple_of(d) {
            candle_core::bail!("attention output of width {width} is not whole heads of {d}");
        }
        let heads = width / d;
        // (heads, d, n) · (heads, n, d): one Gram matrix per head.
        let c = ctx
            .to_dtype(DType::F32)?
            .reshape((n, heads, d))?
            .transpose(0, 1)?
            .contiguous()?;
        let gram = c.t()?.contiguous()?.matmul(&c)?;
        let per = slot(&mut self.heads, layer);
        per.resize_with(heads, Vec::new);
        for (h, sums) in per.iter_mut().enumerate() {
            add(sums, &gram.get(h)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(ctx)
    }
}

/// Zeroes the listed FFN channels and heads of each layer.
#[derive(Debug, Clone, Default)]
pub struct Mask {
    pub head_dim: usize,
    /// Per layer: FFN channels to zero.
    pub ffn: Vec<Vec<usize>>,
    /// Per layer: heads to zero.
    pub heads: Vec<Vec<usize>>,
}

/// `t` (tokens, width) with the listed groups of `group` columns zeroed.
fn zero_columns(t: Tensor, removed: Option<&Vec<usize>>, group: usize) -> Result<Tensor> {
    let Some(removed) = removed.filter(|r| !r.is_empty()) else {
        return Ok(t);
    };
    let width = t.dim(1)?;
    let mut keep = vec![1f32; width];
    for &g in removed {
        let cols = keep
            .get_mut(g * group..(g + 1) * group)
            .ok_or_else(|| candle_core::Error::Msg(format!("group {g} is past {width} columns")))?;
        cols.fill(0.0);
    }
    let keep = Tensor::from_vec(keep, width, t.device())?.to_dtype(t.dtype())?;
    t.broadcast_mul(&keep)
}

impl Probe for Mask {
    fn ffn(&mut self, layer: usize, a: Tensor) -> Result<Tensor> {
        zero_columns(a, self.ffn.get(layer), 1)
    }

    fn heads(&mut self, layer: usize, ctx: Tensor) -> Result<Tensor> {
        zero_columns(ctx, self.heads.get(layer), self.head_dim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn activity_sums_squares_and_head_grams() {
        let dev = Device::Cpu;
        // Two tokens, two heads of two.
        let ctx = Tensor::new(&[[1f32, 2., 3., 4.], [5., 6., 7., 8.]], &dev).unwrap();
        let mut a = Activity::new(2);
        a.ffn(0, ctx.clone()).unwrap();
        a.heads(0, ctx).unwrap();
        assert_eq!(a.ffn[0], [26.0, 40.0, 58.0, 80.0]);
        assert_eq!(a.tokens, 2);
        // Head 0 sees (1,2) and (5,6): [[1+25, 2+30], [2+30, 4+36]].
        assert_eq!(a.heads[0][0], [26.0, 32.0, 32.0, 40.0]);
        assert_eq!(a.heads[0][1], [58.0, 68.0, 68.0, 80.0]);
    }

    #[test]
    fn mask_zeroes_whole_heads_and_channels() {
        let dev = Device::Cpu;
        let t = Tensor::new(&[[1f32, 2., 3., 4.]], &dev).unwrap();
        let mut m = Mask {
            head_dim: 2,
            ffn: vec![vec![3]],
            heads: vec![vec![0]],
        };
        let h = m.heads(0, t.clone()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(h, [[0., 0., 3., 4.]]);
        let f = m.ffn(0, t.clone()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(f, [[1., 2., 3., 0.]]);
        // A layer with nothing listed passes through.
        assert_eq!(
            m.ffn(1, t).unwrap().to_vec2::<f32>().unwrap(),
            [[1., 2., 3., 4.]]
        );
    }
}
