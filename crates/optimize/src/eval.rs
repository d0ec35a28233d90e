//! Quality of a model against a reference model on a corpus.
//!
//! Generation follows llama.cpp's `perplexity` tool: the corpus is tokenized
//! once, cut into chunks of `ctx` tokens (the first replaced by BOS when the
//! model adds one), and each chunk is scored on its second half, so every
//! scored token has at least `ctx / 2` tokens of context. KL divergence and
//! top-1 agreement compare the two models' next-token distributions at the
//! same positions. Embeddings compare each sentence's vector with the
//! reference's (cosine) and the two similarity structures (Spearman's rank
//! correlation of all pairwise similarities). Rerankers and classifiers
//! compare their scores: the largest difference, Spearman's correlation of
//! all scores, and how often the best answer agrees (a classifier's label;
//! a reranker's best of eight candidate texts for a query).

use std::path::{Path, PathBuf};

use half::f16;
use modelship_engine::{EncodeBackend, Sequence};
use modelship_engine_candle::{DecoderBackend, Device, OpenModel, open};
use modelship_model::{EncoderOutput, ScoreActivation, TextTokenizer};
use modelship_types::Task;
use serde::Serialize;

use crate::Corpus;
use crate::metrics::{argmax, cosine, kl_divergence, log_softmax, pairwise_cosines, spearman};

/// How much of the corpus to use.
#[derive(Debug, Clone, Copy)]
pub struct EvalOptions {
    /// Tokens per perplexity chunk (llama.cpp's `-c`).
    pub ctx: usize,
    /// At most this many chunks (llama.cpp's `--chunks`); all when `None`.
    pub chunks: Option<usize>,
    /// Sentences for embedding models.
    pub sentences: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            ctx: 512,
            chunks: None,
            sentences: 128,
        }
    }
}

/// Every figure of one evaluation.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "task", rename_all = "lowercase")]
pub enum Report {
    Generate(GenerateReport),
    Embeddings(EmbeddingsReport),
    /// A reranker's or classifier's.
    Scores(ScoresReport),
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerateReport {
    pub model: PathBuf,
    pub reference: PathBuf,
    pub corpus: String,
    pub ctx: usize,
    pub chunks: usize,
    pub tokens_scored: usize,
    pub perplexity: f64,
    pub reference_perplexity: f64,
    /// `perplexity / reference_perplexity - 1`.
    pub ppl_increase: f64,
    /// Mean KL(reference ‖ model) over the scored positions.
    pub kld: f64,
    /// Share of scored positions where both models' likeliest token agree.
    pub top1_agreement: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingsReport {
    pub model: PathBuf,
    pub reference: PathBuf,
    pub corpus: String,
    pub sentences: usize,
    pub cosine_mean: f64,
    pub cosine_min: f64,
    pub spearman: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScoresReport {
    pub model: PathBuf,
    pub reference: PathBuf,
    pub corpus: String,
    /// `rerank` or `classify`.
    pub task: Task,
    /// Texts (a classifier's) or (query, text) pairs (a reranker's) scored.
    pub inputs: usize,
    /// The largest difference of one score from the reference's.
    pub max_score_diff: f64,
    /// Spearman's rank correlation of all scores with the reference's.
    pub spearman: f64,
    /// Share of inputs whose best label (a reranker: of queries whose best
    /// candidate) is the reference's.
    pub top1_agreement: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot load {path}")]
    Load {
        path: PathBuf,
        #[source]
        source: Box<modelship_engine_candle::LoadError>,
    },
    #[error(
        "{model} is a {model_task} model but the reference {reference} is a {reference_task} model"
    )]
    TaskMismatch {
        model: PathBuf,
        model_task: modelship_types::Task,
        reference: PathBuf,
        reference_task: modelship_types::Task,
    },
    #[error("the corpus has {tokens} tokens, fewer than one chunk of {ctx}")]
    CorpusTooShort { tokens: usize, ctx: usize },
    #[error("the corpus has {0} sentences; at least 2 are needed")]
    TooFewSentences(usize),
    #[error("{what} of {path}: {reason}")]
    Run {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("`--ctx` must be at least 4, not {0}")]
    BadContext(usize),
}

/// The reference's side of an evaluation, computed once and compared with
/// any number of candidates.
pub enum Baseline {
    Generate(GenerateBaseline),
    Embeddings(EmbeddingsBaseline),
    Scores(ScoresBaseline),
}

pub struct GenerateBaseline {
    path: PathBuf,
    corpus: String,
    ctx: usize,
    chunks: Vec<Vec<u32>>,
    /// Per scored position, the reference's log-probabilities in f16 (half
    /// the memory; KL terms need far less precision than f16 keeps).
    log_probs: Vec<Vec<f16>>,
    top1: Vec<usize>,
    nll: f64,
}

pub struct EmbeddingsBaseline {
    path: PathBuf,
    corpus: String,
    sentences: Vec<Sequence>,
    vectors: Vec<Vec<f32>>,
    similarities: Vec<f64>,
}

/// A reranker's candidates per query in its evaluation.
const CANDIDATES: usize = 8;

pub struct ScoresBaseline {
    path: PathBuf,
    corpus: String,
    task: Task,
    inputs: Vec<Sequence>,
    scores: Vec<Vec<f32>>,
}

pub(crate) fn open_model(path: &Path, ctx: usize) -> Result<OpenModel, EvalError> {
    open(path, &Device::Cpu, ctx).map_err(|source| EvalError::Load {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

pub(crate) fn run_err(path: &Path, what: &'static str) -> impl FnOnce(String) -> EvalError {
    let path = path.to_owned();
    move |reason| EvalError::Run { path, what, reason }
}

impl Baseline {
    /// Runs the reference model over the corpus.
    pub fn compute(
        reference: &Path,
        corpus: &Corpus,
        opts: EvalOptions,
    ) -> Result<Self, EvalError> {
        if opts.ctx < 4 {
            return Err(EvalError::BadContext(opts.ctx));
        }
        match open_model(reference, opts.ctx)? {
            OpenModel::Generate {
                tokenizer, backend, ..
            } => {
                let chunks = chunk(&tokenizer, corpus, opts, reference)?;
                let (mut log_probs, mut top1, mut nll) = (Vec::new(), Vec::new(), 0.0);
                for c in &chunks {
                    for (j, lp) in scored(&backend, c).map_err(run_err(reference, "scoring"))? {
                        nll -= lp[c[j + 1] as usize];
                        top1.push(argmax(&lp));
                        log_probs.push(lp.iter().map(|&v| f16::from_f64(v)).collect());
                    }
                }
                Ok(Baseline::Generate(GenerateBaseline {
                    path: reference.to_owned(),
                    corpus: corpus.name.clone(),
                    ctx: opts.ctx,
                    chunks,
                    log_probs,
                    top1,
                    nll,
                }))
            }
            OpenModel::Encoder {
                tokenizer,
                mut backend,
                encoder,
            } if encoder.task() != Task::Embeddings => {
                let task = encoder.task();
                let sentences = corpus.sentences(opts.sentences);
                let inputs = score_inputs(&tokenizer, task, &sentences, encoder.context())
                    .map_err(run_err(reference, "tokenizing the corpus"))?;
                if inputs.len() < 2 {
                    return Err(EvalError::TooFewSentences(sentences.len()));
                }
                let activation = activation(&encoder.output);
                let scores = score_all(&mut backend, &inputs, activation)
                    .map_err(run_err(reference, "scoring"))?;
                Ok(Baseline::Scores(ScoresBaseline {
                    path: reference.to_owned(),
                    corpus: corpus.name.clone(),
                    task,
                    inputs,
                    scores,
                }))
            }
            OpenModel::Encoder {
                tokenizer,
                mut backend,
                encoder,
            } => {
                let sentences =
                    tokenized_sentences(&tokenizer, corpus, opts.sentences, encoder.context())
                        .map_err(run_err(reference, "tokenizing the corpus"))?;
                if sentences.len() < 2 {
                    return Err(EvalError::TooFewSentences(sentences.len()));
                }
                let vectors =
                    embed_all(&mut backend, &sentences).map_err(run_err(reference, "embedding"))?;
                Ok(Baseline::Embeddings(EmbeddingsBaseline {
                    path: reference.to_owned(),
                    corpus: corpus.name.clone(),
                    similarities: pairwise_cosines(&vectors),
                    sentences,
                    vectors,
                }))
            }
        }
    }

    /// Runs `model` over the same corpus and compares.
    pub fn compare(&self, model: &Path) -> Result<Report, EvalError> {
        let ctx = match self {
            Baseline::Generate(b) => b.ctx,
            Baseline::Embeddings(_) | Baseline::Scores(_) => 512,
        };
        let opened = open_model(model, ctx)?;
        match (self, opened) {
            (Baseline::Generate(b), OpenModel::Generate { backend, .. }) => {
                b.compare(model, &backend).map(Report::Generate)
            }
            (
                Baseline::Embeddings(b),
                OpenModel::Encoder {
                    mut backend,
                    encoder,
                    ..
                },
            ) if encoder.task() == Task::Embeddings => {
                b.compare(model, &mut backend).map(Report::Embeddings)
            }
            (
                Baseline::Scores(b),
                OpenModel::Encoder {
                    mut backend,
                    encoder,
                    ..
                },
            ) if encoder.task() == b.task => {
                let activation = activation(&encoder.output);
                b.compare(model, &mut backend, activation)
                    .map(Report::Scores)
            }
            (baseline, opened) => Err(EvalError::TaskMismatch {
                model: model.to_owned(),
                model_task: opened.task(),
                reference: baseline.path().to_owned(),
                reference_task: match baseline {
                    Baseline::Generate(_) => Task::Generate,
                    Baseline::Embeddings(_) => Task::Embeddings,
                    Baseline::Scores(b) => b.task,
                },
            }),
        }
    }

    fn path(&self) -> &Path {
        match self {
            Baseline::Generate(b) => &b.path,
            Baseline::Embeddings(b) => &b.path,
            Baseline::Scores(b) => &b.path,
        }
    }
}

/// `evaluate MODEL --reference REF`: the baseline and one comparison.
pub fn evaluate(
    model: &Path,
    reference: &Path,
    corpus: &Corpus,
    opts: EvalOptions,
) -> Result<Report, EvalError> {
    Baseline::compute(reference, corpus, opts)?.compare(model)
}

/// The corpus's first `max` sentences as encoder inputs of at most
/// `context` tokens.
pub(crate) fn tokenized_sentences(
    tokenizer: &TextTokenizer,
    corpus: &Corpus,
    max: usize,
    context: usize,
) -> Result<Vec<Sequence>, String> {
    corpus
        .sentences(max)
        .iter()
        .map(|s| {
            tokenizer
                .encode_sequence(s, None, Some(context))
                .map(|(ids, type_ids)| Sequence { ids, type_ids })
        })
        .collect()
}

/// The corpus as llama.cpp's perplexity cuts it.
pub(crate) fn chunk(
    tokenizer: &TextTokenizer,
    corpus: &Corpus,
    opts: EvalOptions,
    path: &Path,
) -> Result<Vec<Vec<u32>>, EvalError> {
    let tokens = tokenizer
        .encode(&corpus.text, true)
        .map_err(run_err(path, "tokenizing the corpus"))?;
    let available = tokens.len() / opts.ctx;
    if available == 0 {
        return Err(EvalError::CorpusTooShort {
            tokens: tokens.len(),
            ctx: opts.ctx,
        });
    }
    let n = opts.chunks.map_or(available, |c| c.min(available));
    Ok(tokens
        .chunks_exact(opts.ctx)
        .take(n)
        .map(|c| {
            let mut c = c.to_vec();
            if let Some(bos) = tokenizer.bos() {
                c[0] = bos;
            }
            c
        })
        .collect())
}

/// `(j, log-probabilities after token j)` for the scored half of a chunk:
/// `j` from `ctx / 2` to `ctx - 2`, each predicting token `j + 1`.
fn scored(backend: &DecoderBackend, chunk: &[u32]) -> Result<Vec<(usize, Vec<f64>)>, String> {
    let logits = backend.score(chunk).map_err(|e| e.0)?;
    let first = chunk.len() / 2;
    Ok((first..chunk.len() - 1)
        .map(|j| (j, log_softmax(&logits[j])))
        .collect())
}

fn embed_all(
    backend: &mut impl EncodeBackend,
    sentences: &[Sequence],
) -> Result<Vec<Vec<f32>>, String> {
    let mut out = Vec::with_capacity(sentences.len());
    for batch in sentences.chunks(32) {
        let refs: Vec<&Sequence> = batch.iter().collect();
        out.extend(backend.encode(&refs).map_err(|e| e.0)?);
    }
    Ok(out)
}

impl GenerateBaseline {
    fn compare(&self, model: &Path, backend: &DecoderBackend) -> Result<GenerateReport, EvalError> {
        let (mut nll, mut kld, mut agree, mut k) = (0.0, 0.0, 0usize, 0usize);
        for c in &self.chunks {
            for (j, lp) in scored(backend, c).map_err(run_err(model, "scoring"))? {
                let reference: Vec<f64> = self.log_probs[k].iter().map(|v| v.to_f64()).collect();
                if lp.len() != reference.len() {
                    return Err(run_err(model, "scoring")(format!(
                        "its vocabulary of {} tokens is not the reference's {}",
                        lp.len(),
                        reference.len()
                    )));
                }
                nll -= lp[c[j + 1] as usize];
                kld += kl_divergence(&reference, &lp);
                agree += usize::from(argmax(&lp) == self.top1[k]);
                k += 1;
            }
        }
        let n = k.max(1) as f64;
        let perplexity = (nll / n).exp();
        let reference_perplexity = (self.nll / n).exp();
        Ok(GenerateReport {
            model: model.to_owned(),
            reference: self.path.clone(),
            corpus: self.corpus.clone(),
            ctx: self.ctx,
            chunks: self.chunks.len(),
            tokens_scored: k,
            perplexity,
            reference_perplexity,
            ppl_increase: perplexity / reference_perplexity - 1.0,
            kld: kld / n,
            top1_agreement: agree as f64 / n,
        })
    }
}

/// A classifier's inputs are the sentences; a reranker's, each query
/// sentence paired with the next [`CANDIDATES`] sentences after the queries.
fn score_inputs(
    tokenizer: &TextTokenizer,
    task: Task,
    sentences: &[String],
    context: usize,
) -> Result<Vec<Sequence>, String> {
    let encode = |a: &str, b: Option<&str>| {
        tokenizer
            .encode_sequence(a, b, Some(context))
            .map(|(ids, type_ids)| Sequence { ids, type_ids })
    };
    if task == Task::Classify {
        return sentences.iter().map(|s| encode(s, None)).collect();
    }
    let queries = sentences.len() / (CANDIDATES + 1);
    let (queries, texts) = sentences.split_at(queries);
    queries
        .iter()
        .zip(texts.chunks_exact(CANDIDATES))
        .flat_map(|(q, group)| group.iter().map(move |t| encode(q, Some(t))))
        .collect()
}

/// How the model's logits become the scores it serves.
fn activation(output: &EncoderOutput) -> ScoreActivation {
    match output {
        EncoderOutput::Classifier(h) => h.activation,
        EncoderOutput::Pooled { .. } => ScoreActivation::Identity,
    }
}

fn score_all(
    backend: &mut impl EncodeBackend,
    inputs: &[Sequence],
    activation: ScoreActivation,
) -> Result<Vec<Vec<f32>>, String> {
    Ok(embed_all(backend, inputs)?
        .iter()
        .map(|logits| activation.apply(logits))
        .collect())
}

impl ScoresBaseline {
    fn compare(
        &self,
        model: &Path,
        backend: &mut impl EncodeBackend,
        activation: ScoreActivation,
    ) -> Result<ScoresReport, EvalError> {
        let scores =
            score_all(backend, &self.inputs, activation).map_err(run_err(model, "scoring"))?;
        if scores
            .iter()
            .zip(&self.scores)
            .any(|(a, b)| a.len() != b.len())
        {
            return Err(run_err(model, "scoring")(
                "its labels are not the reference's".into(),
            ));
        }
        let flat = |s: &[Vec<f32>]| -> Vec<f64> { s.iter().flatten().map(|&x| x as f64).collect() };
        let (ours, theirs) = (flat(&scores), flat(&self.scores));
        let max_score_diff = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        // The best label of each input, or the best candidate of each query.
        let best = |s: &[Vec<f32>]| -> Vec<usize> {
            match self.task {
                Task::Rerank => s
                    .chunks(CANDIDATES)
                    .map(|group| argmax(&group.iter().map(|v| v[0]).collect::<Vec<_>>()))
                    .collect(),
                _ => s.iter().map(|v| argmax(v)).collect(),
            }
        };
        let (a, b) = (best(&scores), best(&self.scores));
        let agree = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        Ok(ScoresReport {
            model: model.to_owned(),
            reference: self.path.clone(),
            corpus: self.corpus.clone(),
            task: self.task,
            inputs: scores.len(),
            max_score_diff,
            spearman: spearman(&ours, &theirs),
            top1_agreement: agree as f64 / a.len().max(1) as f64,
        })
    }
}

impl EmbeddingsBaseline {
    fn compare(
        &self,
        model: &Path,
        backend: &mut impl EncodeBackend,
    ) -> Result<EmbeddingsReport, EvalError> {
        let vectors = embed_all(backend, &self.sentences).map_err(run_err(model, "embedding"))?;
        let cosines: Vec<f64> = vectors
            .iter()
            .zip(&self.vectors)
            .map(|(a, b)| cosine(a, b))
            .collect();
        Ok(EmbeddingsReport {
            model: model.to_owned(),
            reference: self.path.clone(),
            corpus: self.corpus.clone(),
            sentences: vectors.len(),
            cosine_mean: cosines.iter().sum::<f64>() / cosines.len() as f64,
            cosine_min: cosines.iter().copied().fold(f64::INFINITY, f64::min),
            spearman: spearman(&pairwise_cosines(&vectors), &self.similarities),
        })
    }
}
