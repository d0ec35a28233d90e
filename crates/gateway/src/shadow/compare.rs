//! Comparing two revisions' answers to one request, as pure functions of
//! the bodies: the routes that can be compared, what each answer says, and
//! the [`LiveSample`] the pair makes. The worker in `shadow.rs` fetches the
//! bodies; nothing here does I/O.

use base64::Engine as _;
use modelship_types::LiveSample;
use serde_json::{Value, json};

/// Most likely tokens the scoring call lists per position: the KL estimate
/// is over the stable revision's this many, the rest of the mass as one.
pub(crate) const TOP: usize = 20;

/// What a request asks, as far as comparing answers goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Embeddings,
    Completion,
    Chat,
    Rerank,
    Predict,
}

impl Kind {
    /// The routes whose answers can be compared.
    pub(crate) fn of(path: &str) -> Option<Kind> {
        Some(match path {
            "/v1/embeddings" => Kind::Embeddings,
            "/v1/completions" => Kind::Completion,
            "/v1/chat/completions" => Kind::Chat,
            "/rerank" | "/v1/rerank" => Kind::Rerank,
            "/predict" => Kind::Predict,
            _ => return None,
        })
    }

    pub(crate) fn generates(self) -> bool {
        matches!(self, Kind::Completion | Kind::Chat)
    }
}

fn json(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))
}

/// The vectors of an OpenAI embeddings response, in input order (floats or
/// base64 little-endian f32).
pub(crate) fn vectors(body: &[u8]) -> Result<Vec<Vec<f32>>, String> {
    let v = json(body)?;
    let data = v["data"].as_array().ok_or("no `data` list")?;
    let mut out: Vec<(u64, Vec<f32>)> = Vec::with_capacity(data.len());
    for (i, item) in data.iter().enumerate() {
        let index = item["index"].as_u64().unwrap_or(i as u64);
        let vector = match &item["embedding"] {
            Value::Array(xs) => xs
                .iter()
                .map(|x| x.as_f64().map(|x| x as f32))
                .collect::<Option<Vec<f32>>>()
                .ok_or(format!("data[{i}].embedding holds a non-number"))?,
            Value::String(b64) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| format!("data[{i}].embedding: {e}"))?;
                if bytes.len() % 4 != 0 {
                    return Err(format!("data[{i}].embedding is not whole f32s"));
                }
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            }
            _ => return Err(format!("data[{i}] has no embedding")),
        };
        out.push((index, vector));
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, v)| v).collect())
}

/// Cosine of each pair of vectors.
pub(crate) fn cosines(stable: &[Vec<f32>], candidate: &[Vec<f32>]) -> Result<Vec<f32>, String> {
    if stable.len() != candidate.len() {
        return Err(format!(
            "{} vectors against {}",
            candidate.len(),
            stable.len()
        ));
    }
    stable
        .iter()
        .zip(candidate)
        .map(|(a, b)| {
            if a.len() != b.len() {
                return Err(format!("{} dimensions against {}", b.len(), a.len()));
            }
            let c = modelship_types::stats::cosine(a, b);
            if !c.is_finite() {
                return Err("a vector holds NaN or infinity".into());
            }
            Ok(c as f32)
        })
        .collect()
}

/// The first choice's generated text; `None` when it has none to score (a
/// tool call, an empty answer).
pub(crate) fn answer_text(body: &[u8], kind: Kind) -> Result<Option<String>, String> {
    let v = json(body)?;
    let choice = &v["choices"][0];
    let text = match kind {
        Kind::Chat => &choice["message"]["content"],
        _ => &choice["text"],
    };
    match text {
        Value::String(s) if !s.is_empty() => Ok(Some(s.clone())),
        Value::String(_) | Value::Null => Ok(None),
        _ => Err("the first choice's text is not a string".into()),
    }
}

/// The request as the comparison sends it for the stable revision's
/// answer: whole (not streamed), one choice. `echo` is off: the answer is
/// what is scored.
pub(crate) fn whole_answer_request(request: &Value) -> Value {
    let mut r = request.clone();
    if let Some(o) = r.as_object_mut() {
        o.remove("stream");
        o.remove("stream_options");
        o.remove("echo");
        o.insert("n".into(), json!(1));
    }
    r
}

/// The `/logprobs` body scoring `continuation` after `request`'s prompt;
/// `None` for prompts it cannot take (lists of prompts, token ids).
pub(crate) fn scoring_request(
    request: &Value,
    kind: Kind,
    continuation: &str,
    also: &[Vec<u32>],
) -> Option<Value> {
    let mut out = json!({
        "continuation": continuation,
        "top_logprobs": TOP,
        "also": also,
    });
    match kind {
        Kind::Chat => {
            out["messages"] = request.get("messages")?.clone();
            if let Some(tools) = request.get("tools").filter(|t| !t.is_null()) {
                out["tools"] = tools.clone();
            }
        }
        Kind::Completion => match request.get("prompt")? {
            Value::String(p) => out["prompt"] = json!(p),
            Value::Array(ps) if ps.len() == 1 && ps[0].is_string() => out["prompt"] = ps[0].clone(),
            _ => return None,
        },
        _ => return None,
    }
    Some(out)
}

/// Whether a generation request samples greedily (temperature 0).
pub(crate) fn greedy(request: &Value) -> bool {
    request["temperature"].as_f64() == Some(0.0)
}

/// One continuation token as `/logprobs` scored it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scored {
    pub(crate) id: u32,
    pub(crate) logprob: f64,
    /// The most likely tokens first, then the ones asked for.
    pub(crate) top: Vec<(u32, f64)>,
}

/// The tokens of a `/logprobs` response.
pub(crate) fn scored(body: &[u8]) -> Result<Vec<Scored>, String> {
    let v = json(body)?;
    let tokens = v["tokens"].as_array().ok_or("no `tokens` list")?;
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let bad = || format!("tokens[{i}] is malformed");
            let top = t["top"]
                .as_array()
                .ok_or_else(bad)?
                .iter()
                .map(|p| Some((p[0].as_u64()? as u32, p[1].as_f64()?)))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(bad)?;
            Ok(Scored {
                id: t["id"].as_u64().ok_or_else(bad)? as u32,
                logprob: t["logprob"].as_f64().ok_or_else(bad)?,
                top,
            })
        })
        .collect()
}

/// The stable revision's most likely ids per position: what the candidate
/// is asked for too.
pub(crate) fn top_ids(stable: &[Scored]) -> Vec<Vec<u32>> {
    stable
        .iter()
        .map(|s| s.top.iter().take(TOP).map(|t| t.0).collect())
        .collect()
}

/// The stable revision's answer scored by both revisions, compared
/// position by position.
pub(crate) fn generation(
    stable: &[Scored],
    candidate: &[Scored],
    greedy: bool,
) -> Result<LiveSample, String> {
    if stable.len() != candidate.len() || stable.iter().zip(candidate).any(|(s, c)| s.id != c.id) {
        return Err("the revisions tokenize the answer differently".into());
    }
    if stable.is_empty() {
        return Err("nothing scored".into());
    }
    let (mut agree, mut diff, mut kld, mut all_greedy) = (0u32, 0.0, 0.0, true);
    for (s, c) in stable.iter().zip(candidate) {
        let best = |x: &Scored| x.top.first().map(|t| t.0);
        let c_best = best(c).ok_or("no most likely token")?;
        agree += u32::from(best(s) == Some(c_best));
        all_greedy &= c_best == s.id;
        diff += s.logprob - c.logprob;
        kld += coarse_kl(s, c);
    }
    Ok(LiveSample::Generation {
        tokens: stable.len() as u32,
        top1_agree: agree,
        logprob_diff: diff,
        kld,
        greedy_match: greedy.then_some(all_greedy),
    })
}

/// KL(stable ‖ candidate) over the stable revision's listed tokens and the
/// rest of the vocabulary as one outcome: by the data-processing
/// inequality a lower bound of the full divergence, exact when the listed
/// tokens hold nearly all the mass (as they do for a confident model).
fn coarse_kl(s: &Scored, c: &Scored) -> f64 {
    let (mut kl, mut p_listed, mut q_listed) = (0.0, 0.0, 0.0);
    for &(id, lp) in s.top.iter().take(TOP) {
        // The candidate was asked for each of these ids; one missing is
        // as unlikely as its least likely listed token.
        let lq = c
            .top
            .iter()
            .find(|t| t.0 == id)
            .map(|t| t.1)
            .unwrap_or_else(|| c.top.iter().map(|t| t.1).fold(0.0, f64::min));
        let (p, q) = (lp.exp(), lq.exp());
        kl += p * (lp - lq);
        p_listed += p;
        q_listed += q;
    }
    let (rest_p, rest_q) = ((1.0 - p_listed).max(0.0), (1.0 - q_listed).max(1e-12));
    if rest_p > 1e-12 {
        kl += rest_p * (rest_p / rest_q).ln();
    }
    kl.max(0.0)
}

/// Rerank scores by document index (TEI's list, or Cohere's `results`).
pub(crate) fn rerank_scores(body: &[u8]) -> Result<Vec<(u64, f64)>, String> {
    let v = json(body)?;
    let list = match &v {
        Value::Array(l) => l,
        _ => v["results"].as_array().ok_or("no result list")?,
    };
    list.iter()
        .map(|r| {
            let score = r["score"].as_f64().or(r["relevance_score"].as_f64());
            Some((r["index"].as_u64()?, score?))
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| "a result without index and score".to_owned())
}

/// Spearman's rank correlation of two rankings over the documents both
/// ranked; `None` with fewer than two in common.
pub(crate) fn rank_agreement(stable: &[(u64, f64)], candidate: &[(u64, f64)]) -> Option<f64> {
    let common: Vec<(f64, f64)> = stable
        .iter()
        .filter_map(|&(i, s)| candidate.iter().find(|c| c.0 == i).map(|c| (s, c.1)))
        .collect();
    if common.len() < 2 {
        return None;
    }
    let (a, b): (Vec<f64>, Vec<f64>) = common.into_iter().unzip();
    Some(modelship_types::stats::spearman(&a, &b))
}

/// The most likely label of each input of a `/predict` response (one
/// input's list of `{label, score}`, or a list of them).
pub(crate) fn predicted_labels(body: &[u8]) -> Result<Vec<String>, String> {
    let v = json(body)?;
    let Value::Array(list) = v else {
        return Err("not a list".into());
    };
    let inputs: Vec<&Vec<Value>> = match list.first() {
        Some(Value::Array(_)) => list.iter().filter_map(Value::as_array).collect(),
        _ => vec![&list],
    };
    inputs
        .iter()
        .map(|scores| {
            scores
                .iter()
                .filter_map(|s| Some((s["label"].as_str()?, s["score"].as_f64()?)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(l, _)| l.to_owned())
                .ok_or_else(|| "an input without labelled scores".to_owned())
        })
        .collect()
}

/// The comparison of two answers of a route that answers at once
/// (embeddings, rerank, predict).
pub(crate) fn answers(kind: Kind, stable: &[u8], candidate: &[u8]) -> Result<LiveSample, Mismatch> {
    use Mismatch::{Candidate as C, Reference as R};
    match kind {
        Kind::Embeddings => {
            let s = vectors(stable).map_err(R)?;
            let c = vectors(candidate).map_err(C)?;
            Ok(LiveSample::Embeddings {
                cosines: cosines(&s, &c).map_err(C)?,
            })
        }
        Kind::Rerank => {
            let s = rerank_scores(stable).map_err(R)?;
            let c = rerank_scores(candidate).map_err(C)?;
            rank_agreement(&s, &c)
                .map(|spearman| LiveSample::Ranking { spearman })
                .ok_or(Mismatch::Reference(
                    "fewer than two documents to rank".into(),
                ))
        }
        Kind::Predict => {
            let s = predicted_labels(stable).map_err(R)?;
            let c = predicted_labels(candidate).map_err(C)?;
            if s.len() != c.len() {
                return Err(Mismatch::Candidate(format!(
                    "{} inputs against {}",
                    c.len(),
                    s.len()
                )));
            }
            Ok(LiveSample::Labels {
                agree: s.iter().zip(&c).filter(|(a, b)| a == b).count() as u32,
                inputs: s.len() as u32,
            })
        }
        Kind::Completion | Kind::Chat => Err(Mismatch::Reference(
            "a generation is scored, not compared".into(),
        )),
    }
}

/// Why two answers could not be compared: the stable revision's answer
/// is unusable (the sample is skipped), or the candidate's (it failed).
#[derive(Debug, PartialEq)]
pub(crate) enum Mismatch {
    Reference(String),
    Candidate(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_in_floats_and_base64_compare_by_index() {
        let floats = br#"{"data":[{"index":1,"embedding":[0,1]},{"index":0,"embedding":[1,0]}]}"#;
        let b64 = |v: &[f32]| {
            base64::engine::general_purpose::STANDARD
                .encode(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
        };
        let other = format!(
            r#"{{"data":[{{"index":0,"embedding":"{}"}},{{"index":1,"embedding":"{}"}}]}}"#,
            b64(&[1.0, 0.0]),
            b64(&[1.0, 1.0])
        );
        match answers(Kind::Embeddings, floats, other.as_bytes()).unwrap() {
            LiveSample::Embeddings { cosines } => {
                assert!((cosines[0] - 1.0).abs() < 1e-6);
                assert!((cosines[1] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            answers(Kind::Embeddings, floats, br#"{"data":[]}"#),
            Err(Mismatch::Candidate(_))
        ));
        assert!(matches!(
            answers(Kind::Embeddings, b"oops", floats),
            Err(Mismatch::Reference(_))
        ));
        // A broken candidate's NaNs fail it rather than pass a bound.
        let nan = format!(
            r#"{{"data":[{{"index":0,"embedding":"{}"}},{{"index":1,"embedding":"{}"}}]}}"#,
            b64(&[f32::NAN, 0.0]),
            b64(&[1.0, 1.0])
        );
        assert!(matches!(
            answers(Kind::Embeddings, floats, nan.as_bytes()),
            Err(Mismatch::Candidate(_))
        ));
    }

    fn tok(id: u32, lp: f64, top: &[(u32, f64)]) -> Scored {
        Scored {
            id,
            logprob: lp,
            top: top.to_vec(),
        }
    }

    #[test]
    fn generation_figures_from_two_scorings() {
        let (l9, l1) = (0.9f64.ln(), 0.1f64.ln());
        let stable = [
            tok(5, l9, &[(5, l9), (6, l1)]),
            tok(7, l9, &[(7, l9), (8, l1)]),
        ];
        // Same distributions: no divergence, full agreement, greedy match.
        match generation(&stable, &stable, true).unwrap() {
            LiveSample::Generation {
                tokens: 2,
                top1_agree: 2,
                logprob_diff,
                kld,
                greedy_match: Some(true),
            } => assert!(logprob_diff.abs() < 1e-12 && kld.abs() < 1e-12),
            other => panic!("{other:?}"),
        }
        // The candidate prefers token 8 at the second place.
        let candidate = [stable[0].clone(), tok(7, l1, &[(8, l9), (7, l1)])];
        let LiveSample::Generation {
            top1_agree,
            logprob_diff,
            kld,
            greedy_match,
            ..
        } = generation(&stable, &candidate, true).unwrap()
        else {
            panic!()
        };
        assert_eq!((top1_agree, greedy_match), (1, Some(false)));
        assert!((logprob_diff - (l9 - l1)).abs() < 1e-12);
        // Two outcomes listed, all the mass: the exact divergence.
        let exact = 0.9 * (0.9f64 / 0.1).ln() + 0.1 * (0.1f64 / 0.9).ln();
        assert!((kld - exact).abs() < 1e-9, "{kld} {exact}");
        let other_tokens = [tok(5, l9, &[(5, l9)]), tok(9, l9, &[(9, l9)])];
        assert!(generation(&stable, &other_tokens, false).is_err());
    }

    #[test]
    fn the_kl_estimate_never_exceeds_the_full_divergence() {
        // Three outcomes, two listed: the coarse figure is a lower bound.
        let p = [0.6f64, 0.3, 0.1];
        let q = [0.3f64, 0.3, 0.4];
        let full: f64 = p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum();
        let s = tok(0, p[0].ln(), &[(0, p[0].ln()), (1, p[1].ln())]);
        let c = tok(
            0,
            q[0].ln(),
            &[(2, q[2].ln()), (0, q[0].ln()), (1, q[1].ln())],
        );
        let coarse = coarse_kl(&s, &c);
        assert!(coarse > 0.0 && coarse <= full + 1e-12, "{coarse} {full}");
    }

    #[test]
    fn rankings_and_labels() {
        let tei = br#"[{"index":2,"score":0.9},{"index":0,"score":0.5},{"index":1,"score":0.1}]"#;
        let cohere = br#"{"results":[{"index":2,"relevance_score":0.8},{"index":1,"relevance_score":0.6},{"index":0,"relevance_score":0.2}]}"#;
        match answers(Kind::Rerank, tei, tei).unwrap() {
            LiveSample::Ranking { spearman } => assert!((spearman - 1.0).abs() < 1e-12),
            other => panic!("{other:?}"),
        }
        match answers(Kind::Rerank, tei, cohere).unwrap() {
            LiveSample::Ranking { spearman } => assert!((spearman - 0.5).abs() < 1e-12),
            other => panic!("{other:?}"),
        }
        let one = br#"[{"label":"pos","score":0.7},{"label":"neg","score":0.3}]"#;
        let batch = br#"[[{"label":"neg","score":0.6},{"label":"pos","score":0.4}]]"#;
        assert_eq!(
            answers(Kind::Predict, one, batch).unwrap(),
            LiveSample::Labels {
                agree: 0,
                inputs: 1
            }
        );
    }

    #[test]
    fn requests_for_the_reference_and_the_scoring() {
        let chat = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true, "n": 3, "temperature": 0});
        let whole = whole_answer_request(&chat);
        assert_eq!(whole["n"], 1);
        assert!(whole.get("stream").is_none());
        assert!(greedy(&chat));
        let body = scoring_request(&chat, Kind::Chat, "hello", &[vec![1, 2]]).unwrap();
        assert_eq!(body["messages"], chat["messages"]);
        assert_eq!(body["also"], json!([[1, 2]]));
        let ids = json!({"model": "m", "prompt": [1, 2, 3]});
        assert_eq!(scoring_request(&ids, Kind::Completion, "x", &[]), None);
        let answer = br#"{"choices":[{"message":{"role":"assistant","content":"Hello!"}}]}"#;
        assert_eq!(
            answer_text(answer, Kind::Chat).unwrap().as_deref(),
            Some("Hello!")
        );
        let tool_call = br#"{"choices":[{"message":{"role":"assistant","content":null}}]}"#;
        assert_eq!(answer_text(tool_call, Kind::Chat).unwrap(), None);
    }
}
