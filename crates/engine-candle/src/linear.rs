//! Weight matrices as the forward passes use them: block-quantized Q4_0,
//! Q4_1, Q5_0 and Q8_0 and 16-bit F16 and BF16 through our kernels on the
//! CPU (read as stored: a checkpoint's bf16 weights stay bf16 in memory),
//! other GGUF types through candle's GGML kernels, and projections of one
//! input stacked into one matrix (an f16 one among Q8_0 ones too: a q8_0
//! file keeps a grouped-query `attn_v` in f16).

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{DType, Device, Module, Result, Tensor};

use crate::quant_matmul::{BlockFormat, QuantMatrix};
use crate::weight_bytes::{StoredTensor, WeightBytes};

/// A weight matrix: Q4_0, Q4_1, Q5_0, Q8_0, F16 and BF16 through our
/// kernels on the CPU, anything else through candle's GGML kernels.
pub(crate) enum Linear {
    Quant(QuantMatrix),
    Ggml(QMatMul),
}

/// Whether our kernels read blocks of `dtype` in place (a tied output then
/// shares the token table's bytes); the planner counts memory by it.
pub fn reads_in_place(dtype: GgmlDType) -> bool {
    kernel_format(dtype).is_some()
}

/// Bytes candle keeps beside a `(rows, cols)` matrix of `dtype` that its
/// kernels multiply (one [`reads_in_place`] does not cover): on x86, candle
/// 0.11 repacks Q4_K matrices, and Q6_K ones once an input has several
/// rows (every prompt), whose rows are a multiple of 16 and columns of 256,
/// into 16-row tiles with f32 scales, cached for the matrix's life: 0.75 and
/// 1.25 bytes a weight (`quantized::repack_x86`). The planner counts them.
pub fn candle_packed_bytes(dtype: GgmlDType, rows: usize, cols: usize) -> u64 {
    let tiles = cfg!(target_arch = "x86_64") && rows.is_multiple_of(16) && cols.is_multiple_of(256);
    let weights = (rows * cols) as u64;
    match dtype {
        GgmlDType::Q4K if tiles => weights * 3 / 4,
        GgmlDType::Q6K if tiles => weights * 5 / 4,
        _ => 0,
    }
}

/// Our kernel's format for a GGUF type, if it has one.
pub(crate) fn kernel_format(dtype: GgmlDType) -> Option<BlockFormat> {
    match dtype {
        GgmlDType::Q4_0 => Some(BlockFormat::Q4_0),
        GgmlDType::Q4_1 => Some(BlockFormat::Q4_1),
        GgmlDType::Q5_0 => Some(BlockFormat::Q5_0),
        GgmlDType::Q8_0 => Some(BlockFormat::Q8_0),
        GgmlDType::F16 => Some(BlockFormat::F16),
        GgmlDType::BF16 => Some(BlockFormat::BF16),
        _ => None,
    }
}

/// Our kernel for a `cols`-wide matrix of `dtype` where it runs: on the
/// CPU, rows of whole 32-value blocks.
pub(crate) fn runs_on_our_kernel(
    dtype: GgmlDType,
    cols: usize,
    device: &Device,
) -> Option<BlockFormat> {
    kernel_format(dtype).filter(|_| device.is_cpu() && cols.is_multiple_of(32))
}

impl Linear {
    /// A matrix as its file stores it: our kernel reads the bytes where
    /// they lie; candle's gets a copy.
    pub(crate) fn new(t: StoredTensor, device: &Device) -> Result<Self> {
        let [rows, cols] = t.dims[..] else {
            candle_core::bail!("a matrix has two dims, not {:?}", t.dims);
        };
        if let Some(format) = runs_on_our_kernel(t.dtype, cols, device) {
            t.bytes.will_need();
            let m = QuantMatrix::from_bytes(format, t.bytes, rows, cols)
                .map_err(candle_core::Error::Msg)?;
            return Ok(Self::Quant(m));
        }
        Ok(Self::Ggml(QMatMul::from_qtensor(t.into_qtensor(device)?)?))
    }

    /// A matrix whose bytes another part reads too (a tied output shares
    /// the token table's).
    pub(crate) fn shared(
        dtype: GgmlDType,
        bytes: &WeightBytes,
        rows: usize,
        cols: usize,
        device: &Device,
    ) -> Result<Self> {
        let t = StoredTensor {
            dtype,
            dims: vec![rows, cols],
            bytes: bytes.clone(),
        };
        match runs_on_our_kernel(dtype, cols, device) {
            Some(format) => Ok(Self::Quant({
                t.bytes.will_need();
                QuantMatrix::from_bytes(format, t.bytes, rows, cols)
                    .map_err(candle_core::Error::Msg)?
            })),
            // A copy, without letting the table's pages go: its rows are
            // still read in place.
            None => Ok(Self::Ggml(QMatMul::from_qtensor(t.qtensor(device)?)?)),
        }
    }

    /// Outputs per input.
    pub(crate) fn rows(&self) -> usize {
        match self {
            Self::Quant(m) => m.rows(),
            Self::Ggml(m) => match m {
                QMatMul::QTensor(t) => t.shape().dims()[0],
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.dims()[0],
            },
        }
    }

    /// The matrix in f32, (rows, cols).
    pub(crate) fn dequantize(&self, device: &Device) -> Result<Tensor> {
        match self {
            Self::Quant(m) => Tensor::from_vec(m.dequantize()?, (m.rows(), m.cols()), device),
            Self::Ggml(QMatMul::QTensor(t)) => t.dequantize(device),
            Self::Ggml(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.to_dtype(DType::F32),
        }
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
/// when our kernels hold them all (or the file fuses them, as Phi-3 does),
/// else one product each; biases (Qwen2's Q, K and V) added to the outputs.
pub(crate) struct Projections {
    kind: Kind,
    /// The biases of all outputs side by side, where the model has them.
    bias: Option<Tensor>,
}

enum Kind {
    Stacked { linear: Linear, widths: Vec<usize> },
    Separate(Vec<Linear>),
}

impl Projections {
    /// One matrix whose rows are `widths` outputs in turn (Phi-3's fused
    /// `attn_qkv` and gate/up `ffn_up`).
    pub(crate) fn fused(t: StoredTensor, widths: Vec<usize>, device: &Device) -> Result<Self> {
        let rows = t.dims.first().copied().unwrap_or(0);
        if widths.iter().sum::<usize>() != rows {
            candle_core::bail!("a fused matrix of {rows} rows cannot hold outputs of {widths:?}");
        }
        Ok(Self {
            kind: Kind::Stacked {
                linear: Linear::new(t, device)?,
                widths,
            },
            bias: None,
        })
    }

    /// Adds `biases` (one per projection, in order) to the outputs.
    pub(crate) fn with_biases(mut self, biases: Vec<Tensor>) -> Result<Self> {
        let widths = self.widths();
        if biases.len() != widths.len()
            || biases
                .iter()
                .zip(&widths)
                .any(|(b, &w)| b.dims1().ok() != Some(w))
        {
            candle_core::bail!("biases do not match the projections' widths {widths:?}");
        }
        self.bias = Some(Tensor::cat(&biases, 0)?);
        Ok(self)
    }

    fn widths(&self) -> Vec<usize> {
        match &self.kind {
            Kind::Stacked { widths, .. } => widths.clone(),
            Kind::Separate(parts) => parts.iter().map(Linear::rows).collect(),
        }
    }

    /// Projections of one input, stacked where their formats take the same
    /// activations (an f16 `attn_v` beside Q8_0 `attn_q` and `attn_k`: one
    /// pass instead of three).
    pub(crate) fn new(tensors: Vec<StoredTensor>, device: &Device) -> Result<Self> {
        let parts = tensors
            .into_iter()
            .map(|t| Linear::new(t, device))
            .collect::<Result<Vec<_>>>()?;
        Self::from_linears(parts)
    }

    pub(crate) fn from_linears(parts: Vec<Linear>) -> Result<Self> {
        let kind = Self::kind_of(parts)?;
        Ok(Self { kind, bias: None })
    }

    fn kind_of(parts: Vec<Linear>) -> Result<Kind> {
        if !parts.iter().all(|p| matches!(p, Linear::Quant(_))) {
            return Ok(Kind::Separate(parts));
        }
        let matrices: Vec<QuantMatrix> = parts
            .into_iter()
            .map(|p| match p {
                Linear::Quant(m) => m,
                Linear::Ggml(_) => unreachable!("all parts are Quant (checked above)"),
            })
            .collect();
        // Formats taking different activations (Q5_0 beside Q8_0) stay apart.
        if !QuantMatrix::stackable(&matrices) {
            return Ok(Kind::Separate(
                matrices.into_iter().map(Linear::Quant).collect(),
            ));
        }
        let widths = matrices.iter().map(QuantMatrix::rows).collect();
        let stacked = QuantMatrix::stack(matrices).expect("stackable (checked above)");
        Ok(Kind::Stacked {
            linear: Linear::Quant(stacked),
            widths,
        })
    }

    /// All projections of `x` side by side, (n, Σ widths).
    pub(crate) fn forward_joined(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.kind {
            Kind::Stacked { linear, .. } => linear.forward(x)?,
            Kind::Separate(parts) if parts.len() == 1 => parts[0].forward(x)?,
            Kind::Separate(parts) => Tensor::cat(
                &parts
                    .iter()
                    .map(|p| p.forward(x))
                    .collect::<Result<Vec<_>>>()?,
                1,
            )?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// Every projection's matrix in f32, stacked: (Σ widths, cols).
    pub(crate) fn dequantize(&self, device: &Device) -> Result<Tensor> {
        match &self.kind {
            Kind::Stacked { linear, .. } => linear.dequantize(device),
            Kind::Separate(parts) => Tensor::cat(
                &parts
                    .iter()
                    .map(|p| p.dequantize(device))
                    .collect::<Result<Vec<_>>>()?,
                0,
            ),
        }
    }

    /// Each projection of `x` (n, cols), in order.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        if let (Kind::Separate(parts), None) = (&self.kind, &self.bias) {
            return parts.iter().map(|p| p.forward(x)).collect();
        }
        let y = self.forward_joined(x)?;
        let mut start = 0;
        self.widths()
            .into_iter()
            .map(|w| {
                let part = y.narrow(1, start, w);
                start += w;
                part
            })
            .collect()
    }
}
