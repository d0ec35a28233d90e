//! The quantization pass: decide every tensor's type, write the GGUF header,
//! then read, (prune,) encode and write one tensor at a time. The output is
//! written beside its destination and renamed into place when complete, so a
//! failed or killed run never leaves a truncated model under the requested
//! name. (It is not fsynced, as llama.cpp's is not: after a power loss the
//! file may need writing again.)

use std::borrow::Cow;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Value;
use modelship_types::{PruneSpec, QuantType};

use crate::gguf_writer::{GgufWriter, TensorEntry};
use crate::policy::{self, Decision, ModelShape, Rule};
use crate::prune;
use crate::source::{Source, SourceTensor};
use crate::{QuantError, encode};

/// What to write.
#[derive(Debug, Clone, Copy)]
pub struct QuantizeOptions {
    pub to: QuantType,
    /// Magnitude pruning of the linear layers before encoding.
    pub prune: Option<PruneSpec>,
}

/// What happened to one tensor.
#[derive(Debug, Clone)]
pub struct TensorReport {
    pub name: String,
    pub shape: Vec<usize>,
    pub from: GgmlDType,
    pub to: GgmlDType,
    pub rule: Rule,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Zero weights after pruning, for pruned tensors.
    pub zeros: Option<usize>,
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct Summary {
    pub output: PathBuf,
    pub to: QuantType,
    pub tensors: Vec<TensorReport>,
    pub parameters: u64,
    pub weight_bytes_in: u64,
    pub weight_bytes_out: u64,
    pub file_bytes_out: u64,
    pub elapsed: Duration,
}

impl Summary {
    /// Bits per weight of the tensors written, scales included.
    pub fn bits_per_weight(&self) -> f64 {
        self.weight_bytes_out as f64 * 8.0 / self.parameters.max(1) as f64
    }

    /// Input megabytes (of weights) per second.
    pub fn throughput_mb_s(&self) -> f64 {
        self.weight_bytes_in as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Every tensor of `source` with the type it gets as `to` (the same
/// per-tensor policy as [`quantize`]), without writing anything.
pub fn planned_tensors(source: &Source, to: QuantType) -> Vec<(&SourceTensor, Decision)> {
    let shape = ModelShape {
        layers: source.layers(),
        has_output: source.tensors.iter().any(|t| t.name == "output.weight"),
        query_heads_per_kv: source.query_heads_per_kv(),
    };
    source
        .tensors
        .iter()
        .map(|t| (t, policy::decide(to, &t.name, &t.shape, shape)))
        .collect()
}

/// Exact bytes of `source`'s tensors written as `to`.
pub fn planned_bytes(source: &Source, to: QuantType) -> u64 {
    planned_tensors(source, to)
        .iter()
        .map(|(t, d)| encode::encoded_len(d.dtype, t.elements()) as u64)
        .sum()
}

/// Writes `source` as `opts.to` to `output`; `progress(done, total, name)` is
/// called before each tensor.
pub fn quantize(
    source: &Source,
    output: &Path,
    opts: QuantizeOptions,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Summary, QuantError> {
    quantize_verified(source, output, opts, progress, &|_| Ok(()))
}

/// [`quantize`], with `verify` asked about the written file before it takes
/// `output`'s place: a file it refuses (one `serve` could not load, a
/// tensor missing from the source) is removed, never left to be half-used.
pub fn quantize_verified(
    source: &Source,
    output: &Path,
    opts: QuantizeOptions,
    progress: &mut dyn FnMut(usize, usize, &str),
    verify: &dyn Fn(&Path) -> Result<(), String>,
) -> Result<Summary, QuantError> {
    let start = Instant::now();
    let decisions: Vec<Decision> = planned_tensors(source, opts.to)
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    let entries: Vec<TensorEntry> = source
        .tensors
        .iter()
        .zip(&decisions)
        .map(|(t, d)| TensorEntry {
            name: t.name.clone(),
            shape: t.shape.clone(),
            dtype: d.dtype,
        })
        .collect();
    let metadata = output_metadata(source, opts.to);
    // A tensor that keeps its type is copied as stored (as llama.cpp does):
    // faster, and re-encoding decoded blocks could round their scales anew.
    let copies: Vec<bool> = source
        .tensors
        .iter()
        .zip(&decisions)
        .map(|(t, d)| {
            t.dtype == d.dtype && !(opts.prune.is_some() && prune::is_prunable(&t.name, &t.shape))
        })
        .collect();

    let partial = partial_path(output);
    let write_err = |source| QuantError::Write {
        path: output.to_owned(),
        source,
    };
    let file = File::create(&partial).map_err(write_err)?;
    let result = std::thread::scope(|scope| {
        // The next tensor is decoded while this one is encoded. Float
        // tensors are borrowed from the mapped file; decoded ones take turns
        // in two buffers, so memory holds at most two decoded tensors.
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel(1);
        let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<f32>>();
        empty_tx.send(Vec::new()).ok();
        empty_tx.send(Vec::new()).ok();
        let copies = &copies;
        scope.spawn(move || {
            for (t, &copy) in source.tensors.iter().zip(copies) {
                let read = if copy {
                    source.stored(t).map(Payload::Stored)
                } else {
                    let Ok(buf) = empty_rx.recv() else { return };
                    source.floats(t, buf).map(Payload::Floats)
                };
                if full_tx.send(read).is_err() {
                    return;
                }
            }
        });
        let mut writer =
            GgufWriter::new(BufWriter::with_capacity(1 << 20, file), &metadata, entries)
                .map_err(write_err)?;
        let mut reports = Vec::with_capacity(source.tensors.len());
        let mut bytes = Vec::new();
        for (i, (t, d)) in source.tensors.iter().zip(&decisions).enumerate() {
            progress(i, source.tensors.len(), &t.name);
            let payload = full_rx.recv().map_err(|_| QuantError::Invalid {
                path: source.path.clone(),
                reason: "the tensor reader stopped".into(),
            })??;
            let mut data = match payload {
                Payload::Stored(raw) => {
                    writer.write_tensor(&raw).map_err(write_err)?;
                    source.release(t);
                    reports.push(report(t, d, raw.len(), None));
                    continue;
                }
                Payload::Floats(data) => data,
            };
            let cols = t.shape.last().copied().unwrap_or(1);
            let zeros = match opts.prune {
                Some(spec) if prune::is_prunable(&t.name, &t.shape) => {
                    Some(prune::prune(data.to_mut(), cols, spec).map_err(|reason| {
                        QuantError::Invalid {
                            path: source.path.clone(),
                            reason: format!("tensor `{}`: {reason}", t.name),
                        }
                    })?)
                }
                _ => None,
            };
            encode::encode_into(d.dtype, &data, cols, &mut bytes).map_err(|source| {
                QuantError::Encode {
                    tensor: t.name.clone(),
                    source: Box::new(source),
                }
            })?;
            if let Cow::Owned(buf) = data {
                empty_tx.send(buf).ok();
            } else {
                empty_tx.send(Vec::new()).ok();
            }
            source.release(t);
            writer.write_tensor(&bytes).map_err(write_err)?;
            reports.push(report(t, d, bytes.len(), zeros));
        }
        progress(source.tensors.len(), source.tensors.len(), "");
        writer
            .finish()
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .map_err(write_err)?;
        Ok(reports)
    });
    let tensors = match result.and_then(|r| {
        verify(&partial).map_err(|reason| QuantError::Refused {
            path: output.to_owned(),
            reason,
        })?;
        Ok(r)
    }) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, output).map_err(write_err)?;
    let file_bytes_out = std::fs::metadata(output).map_err(write_err)?.len();
    Ok(Summary {
        output: output.to_owned(),
        to: opts.to,
        parameters: source.tensors.iter().map(|t| t.elements() as u64).sum(),
        weight_bytes_in: tensors.iter().map(|t| t.bytes_in).sum(),
        weight_bytes_out: tensors.iter().map(|t| t.bytes_out).sum(),
        file_bytes_out,
        tensors,
        elapsed: start.elapsed(),
    })
}

/// What the reader hands the encoder: stored bytes to copy, or floats.
enum Payload<'a> {
    Stored(Cow<'a, [u8]>),
    Floats(Cow<'a, [f32]>),
}

fn report(t: &SourceTensor, d: &Decision, bytes_out: usize, zeros: Option<usize>) -> TensorReport {
    TensorReport {
        name: t.name.clone(),
        shape: t.shape.clone(),
        from: t.dtype,
        to: d.dtype,
        rule: d.rule,
        bytes_in: t.bytes,
        bytes_out: bytes_out as u64,
        zeros,
    }
}

/// The source's metadata with llama.cpp's file type for `to`.
fn output_metadata(source: &Source, to: QuantType) -> Vec<(String, Value)> {
    let mut md: Vec<(String, Value)> = source
        .metadata
        .iter()
        // The writer sets these; a copied `general.alignment` would tell
        // readers to expect padding the writer does not use.
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "general.file_type" | "general.quantization_version" | "general.alignment"
            )
        })
        .cloned()
        .collect();
    md.push((
        "general.file_type".into(),
        Value::U32(policy::file_type(to)),
    ));
    md.push(("general.quantization_version".into(), Value::U32(2)));
    md
}

fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_owned();
    name.push(".partial");
    output.with_file_name(name)
}
