//! Weight matrices as the forward passes use them: block-quantized Q4_1 and
//! Q8_0 through our kernels on the CPU, other GGUF types through candle's
//! GGML kernels, and projections of one input stacked into one matrix (an
//! f16 one among Q8_0 ones too: a q8_0 file keeps a grouped-query `attn_v`
//! in f16).

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Result, Tensor};

use crate::quant_matmul::{BlockFormat, QuantMatrix};

/// A weight matrix: Q4_1 and Q8_0 through our kernels on the CPU, anything
/// else through candle's GGML kernels.
pub(crate) enum Linear {
    Quant(QuantMatrix),
    Ggml(QMatMul),
}

impl Linear {
    pub(crate) fn new(t: QTensor) -> Result<Self> {
        let format = match t.dtype() {
            GgmlDType::Q4_1 => Some(BlockFormat::Q4_1),
            GgmlDType::Q8_0 => Some(BlockFormat::Q8_0),
            _ => None,
        };
        Self::with_kernel(t, format)
    }

    /// Through our kernel for `format` where it runs (on the CPU, whole
    /// blocks), else through candle's.
    fn with_kernel(t: QTensor, format: Option<BlockFormat>) -> Result<Self> {
        let (rows, cols) = t.shape().dims2()?;
        if let Some(format) = format.filter(|_| t.device().is_cpu() && cols % 32 == 0) {
            let m = QuantMatrix::from_ggml(format, &t.data()?, rows, cols)
                .map_err(candle_core::Error::Msg)?;
            return Ok(Self::Quant(m));
        }
        Ok(Self::Ggml(QMatMul::from_qtensor(t)?))
    }

    /// `x` is (n, cols); returns (n, rows).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Ggml(m) => m.forward(x),
            Self::Quant(m) => {
                let n = x.dim(0)?;
                let data = x.flatten_all()?.to_vec1::<f32>()?;
                Tensor::from_vec(m.matmul(&data, n), (n, m.rows()), x.device())
            }
        }
    }
}

/// Projections of the same input (Q, K, V; gate, up): one stacked matrix
/// when our kernels hold them all, else one product each.
pub(crate) enum Projections {
    Stacked { linear: Linear, widths: Vec<usize> },
    Separate(Vec<Linear>),
}

impl Projections {
    pub(crate) fn new(tensors: Vec<QTensor>) -> Result<Self> {
        // An f16 matrix beside Q8_0 ones joins their stack through the f16
        // kernel, which takes the same 16-bit activations: one pass instead
        // of three, and f16 held as f16 rather than expanded to f32.
        let beside_q8_0 = tensors.iter().any(|t| t.dtype() == GgmlDType::Q8_0);
        let parts = tensors
            .into_iter()
            .map(|t| match t.dtype() {
                GgmlDType::F16 if beside_q8_0 => Linear::with_kernel(t, Some(BlockFormat::F16)),
                _ => Linear::new(t),
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_linears(parts)
    }

    pub(crate) fn from_linears(parts: Vec<Linear>) -> Result<Self> {
        if !parts.iter().all(|p| matches!(p, Linear::Quant(_))) {
            return Ok(Self::Separate(parts));
        }
        let matrices: Vec<QuantMatrix> = parts
            .into_iter()
            .map(|p| match p {
                Linear::Quant(m) => m,
                Linear::Ggml(_) => unreachable!("all parts are Quant (checked above)"),
            })
            .collect();
        let widths = matrices.iter().map(QuantMatrix::rows).collect();
        let stacked = QuantMatrix::stack(matrices).ok_or_else(|| {
            candle_core::Error::Msg("projections of one input differ in format or width".into())
        })?;
        Ok(Self::Stacked {
            linear: Linear::Quant(stacked),
            widths,
        })
    }

    /// All projections of `x` side by side, (n, Σ widths).
    pub(crate) fn forward_joined(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Stacked { linear, .. } => linear.forward(x),
            Self::Separate(parts) if parts.len() == 1 => parts[0].forward(x),
            Self::Separate(_) => Tensor::cat(&self.forward(x)?, 1),
        }
    }

    /// Each projection of `x` (n, cols), in order.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            Self::Separate(parts) => parts.iter().map(|p| p.forward(x)).collect(),
            Self::Stacked { linear, widths } => {
                let y = linear.forward(x)?;
                let mut start = 0;
                widths
                    .iter()
                    .map(|&w| {
                        let part = y.narrow(1, start, w);
                        start += w;
                        part
                    })
                    .collect()
            }
        }
    }
}
