//! Cross-encoders and classifiers: `POST /rerank` and `POST /predict` in
//! text-embeddings-inference's shape, `POST /v1/rerank` in Cohere's (and
//! Jina's). A rerank request becomes one (query, text) pair per text,
//! batched with every other request under the engine's token budget.

use axum::Json as JsonResponse;
use axum::extract::State;
use modelship_engine::{EncodeInput, EncodeOptions, Scores};
use modelship_types::Task;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;
use crate::json::Json;
use crate::state::AppState;

/// TEI's `/rerank`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerankRequest {
    /// Not TEI's, but the gateway routes by it.
    model: Option<String>,
    query: String,
    texts: Vec<String>,
    #[serde(default)]
    truncate: bool,
    /// The logits as they are, not through the model's activation.
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    return_text: bool,
    /// TEI's; only `right` (cut the end) is done here.
    truncation_direction: Option<TruncationDirection>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TruncationDirection;

impl<'de> Deserialize<'de> for TruncationDirection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.eq_ignore_ascii_case("right") {
            Ok(Self)
        } else {
            Err(de::Error::custom(format!(
                "truncation_direction `{s}` is not supported (only `right`)"
            )))
        }
    }
}

#[derive(Debug, Serialize)]
struct Rank {
    index: usize,
    score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

/// A reranking's pairs, checked: the query must say something, and a model
/// that is not a reranker is told so before anything is tokenized.
fn rerank_pairs(
    state: &AppState,
    query: &str,
    texts: &[String],
    texts_field: &str,
) -> Result<Vec<EncodeInput>, ApiError> {
    let card = state.engine.card();
    if card.task != Task::Rerank {
        let why = match card.task {
            Task::Classify => format!(
                "this model is a classifier with {} labels, not a reranker: use POST /predict",
                card.labels.len()
            ),
            other => format!("this model serves {other}, not rerank"),
        };
        return Err(ApiError::bad_request(Some("model".to_owned()), why));
    }
    if query.trim().is_empty() {
        return Err(ApiError::bad_request(
            Some("query".to_owned()),
            "`query` must not be empty",
        ));
    }
    if texts.is_empty() {
        return Err(ApiError::bad_request(
            Some(texts_field.to_owned()),
            format!("`{texts_field}` must not be empty"),
        ));
    }
    Ok(texts
        .iter()
        .map(|t| EncodeInput::Pair(query.to_owned(), t.clone()))
        .collect())
}

/// The first score of each pair (a reranker has one label).
fn relevance(scores: &Scores, raw: bool) -> Vec<f32> {
    let per_input = if raw { &scores.logits } else { &scores.scores };
    per_input
        .iter()
        .map(|s| s.first().copied().unwrap_or(f32::NAN))
        .collect()
}

/// Indices by descending score; ties keep input order.
fn ranked(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

pub(crate) async fn rerank(
    State(state): State<AppState>,
    Json(req): Json<RerankRequest>,
) -> Result<JsonResponse<Vec<Value>>, ApiError> {
    state.check_model(req.model.as_deref())?;
    let _ = req.truncation_direction;
    let pairs = rerank_pairs(&state, &req.query, &req.texts, "texts")?;
    let options = EncodeOptions {
        truncate: req.truncate,
        ..EncodeOptions::default()
    };
    let scores = state.score("texts", pairs, options).await?;
    let relevance = relevance(&scores, req.raw_scores);
    let mut texts: Vec<Option<String>> = req.texts.into_iter().map(Some).collect();
    let out = ranked(&relevance)
        .into_iter()
        .map(|index| Rank {
            index,
            score: relevance[index],
            text: if req.return_text {
                texts[index].take()
            } else {
                None
            },
        })
        .map(|r| serde_json::to_value(r).expect("plain data"))
        .collect();
    Ok(JsonResponse(out))
}

/// Cohere's (and Jina's) `/v1/rerank`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CohereRerankRequest {
    model: Option<String>,
    query: String,
    documents: Vec<Document>,
    /// The best `top_n` results; all when absent.
    top_n: Option<usize>,
    /// Cohere's default is false, Jina's true; unset here means false.
    return_documents: Option<bool>,
}

/// A document: its text, or `{"text": ...}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Document {
    Text(String),
    Object { text: String },
}

impl Document {
    fn into_text(self) -> String {
        match self {
            Document::Text(t) | Document::Object { text: t } => t,
        }
    }
}

pub(crate) async fn cohere_rerank(
    State(state): State<AppState>,
    Json(req): Json<CohereRerankRequest>,
) -> Result<JsonResponse<Value>, ApiError> {
    state.check_model(req.model.as_deref())?;
    if req.top_n == Some(0) {
        return Err(ApiError::bad_request(
            Some("top_n".to_owned()),
            "`top_n` must be at least 1",
        ));
    }
    let texts: Vec<String> = req.documents.into_iter().map(Document::into_text).collect();
    let pairs = rerank_pairs(&state, &req.query, &texts, "documents")?;
    // Cohere and Jina cut over-long documents rather than refuse them.
    let options = EncodeOptions {
        truncate: true,
        ..EncodeOptions::default()
    };
    let scores = state.score("documents", pairs, options).await?;
    let relevance = relevance(&scores, false);
    let order = ranked(&relevance);
    let top = req.top_n.unwrap_or(order.len()).min(order.len());
    let mut texts: Vec<Option<String>> = texts.into_iter().map(Some).collect();
    let results: Vec<Value> = order[..top]
        .iter()
        .map(|&index| {
            let mut r = serde_json::json!({ "index": index, "relevance_score": relevance[index] });
            if req.return_documents == Some(true) {
                r["document"] = serde_json::json!({ "text": texts[index].take() });
            }
            r
        })
        .collect();
    Ok(JsonResponse(serde_json::json!({
        "model": state.engine.card().name,
        "results": results,
        "usage": { "total_tokens": scores.prompt_tokens },
    })))
}

/// TEI's `/predict`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    model: Option<String>,
    inputs: PredictInputs,
    #[serde(default)]
    truncate: bool,
    #[serde(default)]
    raw_scores: bool,
    truncation_direction: Option<TruncationDirection>,
}

/// TEI's shapes: a text, a pair `[a, b]`, or a list of either. Two strings
/// are a pair, as TEI reads them; a batch of two texts is `[["a"], ["b"]]`.
#[derive(Debug, Deserialize)]
#[serde(try_from = "Value")]
struct PredictInputs {
    inputs: Vec<EncodeInput>,
    /// Sent as one input (answered with one list of predictions).
    single: bool,
}

impl TryFrom<Value> for PredictInputs {
    type Error = String;

    fn try_from(v: Value) -> Result<Self, String> {
        const SHAPES: &str = "a text, a pair [text, text], or a list of texts and pairs";
        let one = |v: &Value| -> Option<EncodeInput> {
            match v {
                Value::String(t) => Some(EncodeInput::Text(t.clone())),
                Value::Array(items) => match &items[..] {
                    [Value::String(t)] => Some(EncodeInput::Text(t.clone())),
                    [Value::String(a), Value::String(b)] => {
                        Some(EncodeInput::Pair(a.clone(), b.clone()))
                    }
                    _ => None,
                },
                _ => None,
            }
        };
        // Two strings are one pair before they are a list of two texts.
        if let Some(input) = one(&v) {
            return Ok(Self {
                inputs: vec![input],
                single: true,
            });
        }
        match &v {
            Value::Array(items) => Ok(Self {
                inputs: items.iter().map(one).collect::<Option<_>>().ok_or(format!(
                    "holds an item that is not a text or a pair; expected {SHAPES}"
                ))?,
                single: false,
            }),
            _ => Err(format!("expected {SHAPES}")),
        }
    }
}

#[derive(Debug, Serialize)]
struct Prediction<'a> {
    score: f32,
    label: &'a str,
}

pub(crate) async fn predict(
    State(state): State<AppState>,
    Json(req): Json<PredictRequest>,
) -> Result<JsonResponse<Value>, ApiError> {
    state.check_model(req.model.as_deref())?;
    let _ = req.truncation_direction;
    let PredictInputs { inputs, single } = req.inputs;
    let options = EncodeOptions {
        truncate: req.truncate,
        ..EncodeOptions::default()
    };
    let scores = state.score("inputs", inputs, options).await?;
    let labels = &state.engine.card().labels;
    let per_input = if req.raw_scores {
        &scores.logits
    } else {
        &scores.scores
    };
    let predictions: Vec<Value> = per_input
        .iter()
        .map(|s| {
            let mut p: Vec<Prediction> = s
                .iter()
                .zip(labels)
                .map(|(&score, label)| Prediction { score, label })
                .collect();
            p.sort_by(|a, b| b.score.total_cmp(&a.score));
            serde_json::to_value(p).expect("plain data")
        })
        .collect();
    Ok(JsonResponse(if single {
        predictions.into_iter().next().unwrap_or_default()
    } else {
        Value::Array(predictions)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predict_inputs_read_as_tei_reads_them() {
        let parse = |s: &str| serde_json::from_str::<PredictInputs>(s).unwrap();
        let text = |t: &str| EncodeInput::Text(t.into());
        let p = parse(r#""a""#);
        assert!(p.single && p.inputs == [text("a")]);
        let p = parse(r#"["a", "b"]"#);
        assert!(p.single && p.inputs == [EncodeInput::Pair("a".into(), "b".into())]);
        let p = parse(r#"[["a"], ["b", "c"], "d"]"#);
        assert!(!p.single);
        assert_eq!(
            p.inputs,
            [
                text("a"),
                EncodeInput::Pair("b".into(), "c".into()),
                text("d")
            ]
        );
        let p = parse(r#"["a", "b", "c"]"#);
        assert_eq!(p.inputs, [text("a"), text("b"), text("c")]);
        for bad in ["[1]", "5", r#"[["a", "b", "c"]]"#] {
            let err = serde_json::from_str::<PredictInputs>(bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains("expected a text, a pair"), "{bad}: {err}");
        }
    }

    #[test]
    fn ranking_is_by_descending_score_ties_in_order() {
        assert_eq!(ranked(&[0.1, 0.9, 0.5, 0.9]), [1, 3, 2, 0]);
    }
}
