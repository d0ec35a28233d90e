//! Tool calling on the real Qwen2.5-Coder-0.5B-Instruct GGUF, whose chat
//! template renders tools and whose output is Hermes `<tool_call>` JSON:
//! calls the model decides on, calls demanded (`required`, a named
//! function: constrained to the function's parameters), a round trip with
//! the tool's answer, and the streamed deltas.

mod common;

use std::sync::{Arc, OnceLock};

use common::*;
use modelship_engine::Engine;
use modelship_types::ServingLimits;
use serde_json::{Value, json};

fn qwen2() -> Arc<Engine> {
    static E: OnceLock<Arc<Engine>> = OnceLock::new();
    E.get_or_init(|| {
        load_engine(
            &modelship_testkit::qwen2(),
            ServingLimits {
                max_concurrent: 4,
                max_context: 4096,
                ..ServingLimits::default()
            },
        )
    })
    .clone()
}

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "The city's name"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
                },
                "required": ["city", "unit"],
                "additionalProperties": false
            }
        }},
        {"type": "function", "function": {
            "name": "get_time",
            "description": "The local time in a time zone.",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"type": "string"}},
                "required": ["zone"]
            }
        }}
    ])
}

async fn chat(body: Value) -> Value {
    let r = post_json(&qwen2(), "/v1/chat/completions", body.clone()).await;
    assert_eq!(r.status, 200, "{body}: {}", r.text());
    r.json()
}

fn ask(question: &str) -> Value {
    json!({
        "messages": [{"role": "user", "content": question}],
        "tools": weather_tools(), "max_tokens": 80, "temperature": 0,
    })
}

/// The one call of a response, as (name, arguments parsed).
fn only_call(v: &Value) -> (String, Value) {
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    let calls = choice["message"]["tool_calls"]
        .as_array()
        .expect("tool_calls");
    assert_eq!(calls.len(), 1, "{v}");
    let c = &calls[0];
    assert_eq!(c["type"], "function");
    assert!(c["id"].as_str().unwrap().starts_with("call_"));
    let args: Value = serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap();
    (c["function"]["name"].as_str().unwrap().to_owned(), args)
}

fn assert_weather_args(args: &Value) {
    let obj = args.as_object().unwrap();
    assert!(obj["city"].is_string(), "{args}");
    assert!(
        ["celsius", "fahrenheit"].contains(&obj["unit"].as_str().unwrap()),
        "{args}"
    );
    assert_eq!(obj.len(), 2, "{args}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_model_calls_a_tool_when_it_decides_to() {
    let v = chat(ask("What is the weather in Paris, in celsius?")).await;
    let (name, args) = only_call(&v);
    assert_eq!(name, "get_weather");
    assert_eq!(args["city"], "Paris", "{args}");
    assert!(v["choices"][0]["message"]["content"].is_null(), "{v}");
    // With `none` the tools are not offered: plain text comes back.
    let mut none = ask("What is the weather in Paris, in celsius?");
    none["tool_choice"] = json!("none");
    let v = chat(none).await;
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    assert!(
        v["choices"][0]["message"].get("tool_calls").is_none(),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn demanded_calls_always_fit_the_parameters() {
    // A question no tool answers: `required` still gets a valid call, even
    // sampled at a high temperature.
    for seed in 0..4 {
        let mut body = ask("Write a haiku about the sea.");
        body["tool_choice"] = json!("required");
        body["parallel_tool_calls"] = json!(false);
        body["temperature"] = json!(1.3);
        body["seed"] = json!(seed);
        let v = chat(body).await;
        let (name, args) = only_call(&v);
        match name.as_str() {
            "get_weather" => assert_weather_args(&args),
            "get_time" => assert!(args["zone"].is_string(), "{args}"),
            other => panic!("called {other}"),
        }
    }
    let mut named = ask("What time is it in Tokyo?");
    named["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
    let (name, args) = only_call(&chat(named).await);
    assert_eq!(name, "get_weather");
    assert_weather_args(&args);
    // Parallel calls when allowed: each one valid.
    let mut parallel = ask("Weather in Paris and in Rome, in celsius?");
    parallel["tool_choice"] = json!("required");
    let v = chat(parallel).await;
    let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    for c in calls {
        let args: Value =
            serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap();
        if c["function"]["name"] == "get_weather" {
            assert_weather_args(&args);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tool_round_trip_renders_the_call_and_its_result() {
    let first = chat(ask("What is the weather in Paris, in celsius?")).await;
    let message = first["choices"][0]["message"].clone();
    let call_id = message["tool_calls"][0]["id"].clone();
    let mut body = ask("What is the weather in Paris, in celsius?");
    body["messages"] = json!([
        {"role": "user", "content": "What is the weather in Paris, in celsius?"},
        message,
        {"role": "tool", "tool_call_id": call_id, "content": "{\"temperature\": 21, \"sky\": \"sunny\"}"},
    ]);
    let v = chat(body).await;
    let answer = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    assert!(
        answer.contains("21"),
        "the answer ignores the tool's result: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_calls_arrive_as_deltas() {
    let whole = chat(ask("What is the weather in Paris, in celsius?")).await;
    let (name, args) = only_call(&whole);
    let mut body = ask("What is the weather in Paris, in celsius?");
    body["stream"] = json!(true);
    let chunks = stream_chunks(qwen2(), "/v1/chat/completions", body).await;
    // Accumulated as clients do: by the call's index.
    let (mut names, mut arguments, mut finish) = (Vec::<String>::new(), Vec::<String>::new(), None);
    for chunk in &chunks {
        let choice = &chunk["choices"][0];
        for call in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let k = call["index"].as_u64().unwrap() as usize;
            if names.len() <= k {
                names.resize(k + 1, String::new());
                arguments.resize(k + 1, String::new());
            }
            if let Some(n) = call["function"]["name"].as_str() {
                names[k].push_str(n);
            }
            if let Some(a) = call["function"]["arguments"].as_str() {
                arguments[k].push_str(a);
            }
        }
        if !choice["finish_reason"].is_null() {
            finish = Some(choice["finish_reason"].clone());
        }
    }
    assert_eq!(finish, Some(json!("tool_calls")));
    assert_eq!(names, [name]);
    assert_eq!(serde_json::from_str::<Value>(&arguments[0]).unwrap(), args);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tools_are_400_naming_the_field() {
    let engine = qwen2();
    let base = ask("x");
    for (patch, param) in [
        (
            json!({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}),
            "tools[0].type",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
        ),
        (json!({"tool_choice": "sometimes"}), "tool_choice"),
        (
            json!({"tools": [], "tool_choice": "required"}),
            "tool_choice",
        ),
        (
            json!({"tool_choice": "required", "response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (
            json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{bad"}}]}]}),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            "messages[0].tool_call_id",
        ),
        (
            json!({"messages": [{"role": "user", "content": null}]}),
            "messages[0].content",
        ),
    ] {
        let mut body = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = post_json(&engine, "/v1/chat/completions", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.error().0.as_deref(), Some(param), "{body}: {}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn models_and_tokenize_know_the_chat_and_its_tools() {
    let engine = qwen2();
    let models = get(&engine, "/v1/models").await.json();
    let entry = &models["data"][0];
    assert_eq!(entry["max_model_len"], 4096);
    let caps: Vec<&str> = entry["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for c in [
        "chat",
        "completion",
        "tools",
        "logprobs",
        "structured_outputs",
    ] {
        assert!(caps.contains(&c), "{caps:?}");
    }
    // /tokenize with messages counts what a chat request's prompt holds.
    let request = ask("What is the weather in Paris, in celsius?");
    let counted = post_json(
        &engine,
        "/tokenize",
        json!({"messages": request["messages"], "tools": request["tools"], "with_pieces": true}),
    )
    .await;
    assert_eq!(counted.status, 200, "{}", counted.text());
    let counted = counted.json();
    let answered = chat(request).await;
    assert_eq!(counted["count"], answered["usage"]["prompt_tokens"]);
    // Pieces spell the rendered prompt, tools included.
    let text: String = counted["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["piece"].as_str().unwrap().to_owned())
        .collect();
    assert!(text.starts_with("<|im_start|>system"), "{text}");
    assert!(
        text.contains("get_weather") && text.ends_with("<|im_start|>assistant\n"),
        "{text}"
    );
}
