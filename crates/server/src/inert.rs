//! Fields of OpenAI's request schemas that a replica does not act on (yet).
//! Clients and SDKs send many of them at their defaults
//! (`presence_penalty: 0`, `logit_bias: {}`, `store: false`): each is
//! accepted at the values that ask for nothing, and refused with a 400
//! naming it, and saying why, at any other. They are taken out of a body
//! before the request's own fields are read, which still refuse a field
//! outside the schema, as OpenAI's API does.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// A field, the values that ask for nothing, and why others are refused.
pub struct Inert {
    pub field: &'static str,
    accepts: fn(&Value) -> bool,
    refusal: &'static str,
}

const fn inert(field: &'static str, accepts: fn(&Value) -> bool, refusal: &'static str) -> Inert {
    Inert {
        field,
        accepts,
        refusal,
    }
}

fn one(v: &Value) -> bool {
    v.is_null() || v.as_f64() == Some(1.0)
}

fn off(v: &Value) -> bool {
    v.is_null() || *v == Value::Bool(false)
}

fn empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn null(v: &Value) -> bool {
    v.is_null()
}

fn text_or_null(v: &Value) -> bool {
    v.is_null() || v.is_string()
}

fn object_or_null(v: &Value) -> bool {
    v.is_null() || v.is_object()
}

/// `function_call` without functions: no call asked for.
fn no_call(v: &Value) -> bool {
    matches!(v.as_str(), Some("none" | "auto")) || v.is_null()
}

fn text_only(v: &Value) -> bool {
    v.is_null() || *v == Value::Array(vec![Value::String("text".into())])
}

fn empty_suffix(v: &Value) -> bool {
    v.is_null() || v.as_str() == Some("")
}

const FUNCTIONS: &str = "the deprecated `functions` are not supported: use `tools`";
const IDENTITY: &str = "a string identifying the caller";

/// Chat completions' fields that do nothing here.
pub const CHAT: &[Inert] = &[
    inert("functions", empty, FUNCTIONS),
    inert("function_call", no_call, FUNCTIONS),
    inert("store", off, "completions are not stored here"),
    inert("metadata", object_or_null, "an object"),
    inert("service_tier", text_or_null, "a string"),
    inert("modalities", text_only, "only text is generated here"),
    inert("audio", null, "only text is generated here"),
    inert("prediction", null, "predicted outputs are not supported"),
    inert("reasoning_effort", null, "this model does not reason apart"),
    inert("verbosity", null, "not supported"),
    inert("web_search_options", null, "there is no web search here"),
    inert("prompt_cache_key", text_or_null, "a string"),
    inert("safety_identifier", text_or_null, IDENTITY),
    inert("user", text_or_null, IDENTITY),
];

/// Completions' fields that do nothing here.
pub const COMPLETIONS: &[Inert] = &[
    inert("best_of", one, "only `best_of: 1` is supported"),
    inert(
        "suffix",
        empty_suffix,
        "suffixes (insertion) are not supported",
    ),
    inert("user", text_or_null, IDENTITY),
];

/// Takes `fields` out of `body`: a value that asks for nothing is dropped,
/// any other is a 400 naming the field.
pub fn take(body: &mut Map<String, Value>, fields: &[Inert]) -> Result<(), ApiError> {
    for f in fields {
        if let Some(v) = body.remove(f.field)
            && !(f.accepts)(&v)
        {
            return Err(ApiError::bad_request(
                Some(f.field.to_owned()),
                format!("`{}` is {v}: {}", f.field, f.refusal),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(fields: &[Inert], body: Value) -> Result<Map<String, Value>, (String, String)> {
        let mut map = body.as_object().unwrap().clone();
        take(&mut map, fields)
            .map(|()| map)
            .map_err(|e| (e.param.unwrap_or_default(), e.message))
    }

    #[test]
    fn defaults_that_clients_send_are_accepted_and_removed() {
        let rest = check(
            CHAT,
            json!({
                "messages": [], "functions": [], "function_call": "auto", "store": false,
                "metadata": {"trace": "1"}, "service_tier": "auto", "user": "u-1",
                "modalities": ["text"],
            }),
        )
        .unwrap();
        assert_eq!(rest.keys().collect::<Vec<_>>(), ["messages"]);
        let rest = check(
            COMPLETIONS,
            json!({"prompt": "x", "best_of": 1, "suffix": null}),
        )
        .unwrap();
        assert_eq!(rest.keys().collect::<Vec<_>>(), ["prompt"]);
    }

    #[test]
    fn values_that_ask_for_something_are_refused_by_name() {
        for (body, field) in [
            (json!({"functions": [{"name": "f"}]}), "functions"),
            (json!({"function_call": "required"}), "function_call"),
            (json!({"store": true}), "store"),
            (json!({"user": 5}), "user"),
        ] {
            let (param, message) = check(CHAT, body.clone()).unwrap_err();
            assert_eq!(param, field, "{body}");
            assert!(message.contains(field), "{message}");
        }
        let (param, _) = check(COMPLETIONS, json!({"best_of": 2})).unwrap_err();
        assert_eq!(param, "best_of");
    }

    #[test]
    fn fields_outside_the_schema_are_left_for_the_request_to_refuse() {
        let rest = check(CHAT, json!({"bogus": 1})).unwrap();
        assert!(rest.contains_key("bogus"));
    }
}
