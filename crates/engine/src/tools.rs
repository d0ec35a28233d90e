//! Tool calling: what a request offers and demands, the grammar that makes
//! a demanded call valid JSON for its function's parameters, and the parser
//! that turns a model's tool-call text (in its family's format) back into
//! calls, as the text streams.

use modelship_model::ToolFormat;
use serde_json::{Value, json};

/// A function a request offers the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub name: String,
    /// A JSON schema of the arguments (`{"type": "object"}` when omitted).
    pub parameters: Value,
    /// The request's whole entry (`{"type": "function", "function": {…}}`),
    /// as the chat template renders it.
    pub spec: Value,
}

/// OpenAI's `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model is not shown the tools.
    None,
    /// The model decides; its calls are parsed out of its text.
    Auto,
    /// At least one call, of any offered function.
    Required,
    /// A call of this function.
    Function(String),
}

/// The tools of one chat request.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    pub functions: Vec<Function>,
    pub choice: ToolChoice,
    /// Whether one turn may make several calls.
    pub parallel: bool,
}

impl Tools {
    /// Whether the model is shown the tools (and its calls parsed).
    pub fn offered(&self) -> bool {
        self.choice != ToolChoice::None
    }

    /// The functions a demanded call may be of (all, or the named one).
    fn demanded(&self) -> Option<Vec<&Function>> {
        match &self.choice {
            ToolChoice::None | ToolChoice::Auto => None,
            ToolChoice::Required => Some(self.functions.iter().collect()),
            ToolChoice::Function(name) => {
                Some(self.functions.iter().filter(|f| &f.name == name).collect())
            }
        }
    }
}

/// The key a format writes a call's arguments under.
fn arguments_key(format: ToolFormat) -> &'static str {
    match format {
        ToolFormat::Llama3Json => "parameters",
        ToolFormat::Hermes | ToolFormat::Mistral => "arguments",
    }
}

/// A Lark grammar (llguidance's dialect) of the calls `tools` demands in
/// `format`, or `None` when the model may answer freely. Each call is JSON
/// valid for its function's parameters.
pub fn call_grammar(format: ToolFormat, tools: &Tools) -> Option<String> {
    let functions = tools.demanded()?;
    let key = arguments_key(format);
    let calls: Vec<Value> = functions
        .iter()
        .map(|f| {
            json!({
                "type": "object",
                "properties": {"name": {"const": f.name}, key: f.parameters},
                "required": ["name", key],
                "additionalProperties": false,
            })
        })
        .collect();
    let body = json!({
        "anyOf": calls,
        "x-guidance": {"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "},
    });
    let (one, between, open, close) = match format {
        ToolFormat::Hermes => ("call", "\"\\n\"", "", ""),
        ToolFormat::Llama3Json => ("body", "\"; \"", "", ""),
        ToolFormat::Mistral => ("body", "\", \"", "\"[\" ", " \"]\""),
    };
    let repeat = if tools.parallel {
        format!(" ({between} {one})*")
    } else {
        String::new()
    };
    Some(format!(
        "start: {open}{one}{repeat}{close}\n\
         call: \"<tool_call>\\n\" body \"\\n</tool_call>\"\n\
         body: %json {body}\n"
    ))
}

/// What the parser gives back as text streams through it.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolOutput {
    /// Text for the message's `content`.
    Content(String),
    /// A complete call, the `index`-th of the output; `arguments` is a
    /// JSON object.
    Call {
        index: usize,
        name: String,
        arguments: Value,
    },
}

/// Turns a model's output into content and calls, in its family's format,
/// holding back only text that may still be part of a call.
#[derive(Debug, Clone)]
pub struct ToolParser {
    format: ToolFormat,
    /// Text not yet given back.
    held: String,
    /// Inside a Hermes `<tool_call>` block.
    in_call: bool,
    /// For the bare-JSON formats: the output began as a call, so all of it
    /// is held to the end.
    whole: bool,
    /// Anything but whitespace seen yet.
    started: bool,
    parallel: bool,
    calls: usize,
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

impl ToolParser {
    pub fn new(format: ToolFormat, parallel: bool) -> Self {
        Self {
            format,
            held: String::new(),
            in_call: false,
            whole: false,
            started: false,
            parallel,
            calls: 0,
        }
    }

    /// The calls given back so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    pub fn push(&mut self, text: &str) -> Vec<ToolOutput> {
        self.held.push_str(text);
        let mut out = Vec::new();
        if !self.started {
            let trimmed = self.held.trim_start();
            if trimmed.is_empty() {
                return out;
            }
            self.started = true;
            self.whole = match self.format {
                // Small models of the family often leave the tags out.
                ToolFormat::Hermes => trimmed.starts_with('{'),
                ToolFormat::Llama3Json => {
                    trimmed.starts_with('{') || trimmed.starts_with("<|python_tag|>")
                }
                ToolFormat::Mistral => {
                    trimmed.starts_with('[') || trimmed.starts_with("[TOOL_CALLS]")
                }
            };
        }
        if self.whole {
            return out;
        }
        if self.format != ToolFormat::Hermes {
            // Not a call: everything from here on is content.
            out.push(ToolOutput::Content(std::mem::take(&mut self.held)));
            return out;
        }
        loop {
            if self.in_call {
                let Some(end) = self.held.find(CLOSE) else {
                    return out;
                };
                let body = self.held[..end].to_owned();
                self.held.drain(..end + CLOSE.len());
                self.in_call = false;
                self.call(&body, &mut out);
            } else if let Some(at) = self.held.find(OPEN) {
                let before: String = self.held.drain(..at + OPEN.len()).collect();
                let before = &before[..at];
                if !before.is_empty() && (self.calls == 0 || !before.trim().is_empty()) {
                    out.push(ToolOutput::Content(before.to_owned()));
                }
                self.in_call = true;
            } else {
                // Hold back what may be the start of `<tool_call>`.
                let keep = (1..OPEN.len())
                    .rev()
                    .find(|&n| self.held.ends_with(&OPEN[..n]))
                    .unwrap_or(0);
                let cut = self.held.len() - keep;
                if cut > 0 && (self.calls == 0 || !self.held[..cut].trim().is_empty()) {
                    out.push(ToolOutput::Content(self.held[..cut].to_owned()));
                }
                self.held.drain(..cut);
                return out;
            }
        }
    }

    /// The end of the output: what was held, parsed; text that turns out
    /// not to be a call is given back as content, so nothing is lost.
    pub fn finish(&mut self) -> Vec<ToolOutput> {
        let mut out = Vec::new();
        let held = std::mem::take(&mut self.held);
        if self.in_call {
            // A block the output ended inside (`max_tokens`, or a model
            // that does not close it).
            match parse_call(held.trim(), "arguments") {
                Some((name, arguments)) => self.give(name, arguments, &mut out),
                None => out.push(ToolOutput::Content(format!("{OPEN}{held}"))),
            }
            return out;
        }
        if !self.whole {
            if !held.is_empty() {
                out.push(ToolOutput::Content(held));
            }
            return out;
        }
        let calls = match self.format {
            ToolFormat::Llama3Json => parse_llama3(&held),
            ToolFormat::Mistral => parse_mistral(&held),
            ToolFormat::Hermes => parse_objects(&held),
        };
        match calls {
            Some(calls) if !calls.is_empty() => {
                for (name, arguments) in calls {
                    self.give(name, arguments, &mut out);
                }
            }
            _ => out.push(ToolOutput::Content(held)),
        }
        out
    }

    /// A Hermes block's JSON; text that does not parse is content.
    fn call(&mut self, body: &str, out: &mut Vec<ToolOutput>) {
        match parse_call(body.trim(), "arguments") {
            Some((name, arguments)) => self.give(name, arguments, out),
            None => out.push(ToolOutput::Content(format!("{OPEN}{body}{CLOSE}"))),
        }
    }

    fn give(&mut self, name: String, arguments: Value, out: &mut Vec<ToolOutput>) {
        if self.calls > 0 && !self.parallel {
            return;
        }
        out.push(ToolOutput::Call {
            index: self.calls,
            name,
            arguments,
        });
        self.calls += 1;
    }
}

/// `{"name": …, key: {…}}`; arguments written as a JSON string are read
/// too (some models quote them).
fn parse_call(text: &str, key: &str) -> Option<(String, Value)> {
    let v: Value = serde_json::from_str(text).ok()?;
    call_of(&v, key)
}

fn call_of(v: &Value, key: &str) -> Option<(String, Value)> {
    let name = v.get("name")?.as_str()?.to_owned();
    let args = v
        .get(key)
        .or_else(|| v.get("arguments"))
        .or_else(|| v.get("parameters"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let args = match args {
        Value::String(s) => serde_json::from_str(&s).ok()?,
        other => other,
    };
    args.is_object().then_some((name, args))
}

/// Calls written as bare JSON objects one after another (Hermes-family
/// models that leave the tags out).
fn parse_objects(text: &str) -> Option<Vec<(String, Value)>> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .map(|v| call_of(&v.ok()?, "arguments"))
        .collect()
}

/// Llama 3's: one object, or several separated by `;`, maybe after
/// `<|python_tag|>`. Objects are read whole, so a `;` inside a string
/// separates nothing.
fn parse_llama3(text: &str) -> Option<Vec<(String, Value)>> {
    let text = text.trim();
    let mut rest = text.strip_prefix("<|python_tag|>").unwrap_or(text);
    let mut calls = Vec::new();
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
        if rest.is_empty() {
            return Some(calls);
        }
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let v = values.next()?.ok()?;
        calls.push(call_of(&v, "parameters")?);
        rest = &rest[values.byte_offset()..];
    }
}

/// Mistral's: `[TOOL_CALLS]` (dropped when decoded, as a control token)
/// and a JSON array of calls.
fn parse_mistral(text: &str) -> Option<Vec<(String, Value)>> {
    let text = text.trim();
    let text = text.strip_prefix("[TOOL_CALLS]").unwrap_or(text).trim();
    match serde_json::from_str::<Value>(text).ok()? {
        Value::Array(items) => items.iter().map(|v| call_of(v, "arguments")).collect(),
        v => Some(vec![call_of(&v, "arguments")?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(format: ToolFormat, pieces: &[&str]) -> Vec<ToolOutput> {
        let mut p = ToolParser::new(format, true);
        let mut out: Vec<ToolOutput> = pieces.iter().flat_map(|t| p.push(t)).collect();
        out.extend(p.finish());
        // Adjacent content joined: how it is split is not the point.
        let mut joined: Vec<ToolOutput> = Vec::new();
        for o in out {
            match (joined.last_mut(), o) {
                (Some(ToolOutput::Content(a)), ToolOutput::Content(b)) => a.push_str(&b),
                (_, o) => joined.push(o),
            }
        }
        joined
    }

    /// Calls numbered in order, as the parser must number them.
    fn calls(outputs: Vec<ToolOutput>) -> Vec<ToolOutput> {
        let mut k = 0;
        outputs
            .into_iter()
            .map(|o| match o {
                ToolOutput::Call {
                    index: 0,
                    name,
                    arguments,
                } => {
                    k += 1;
                    ToolOutput::Call {
                        index: k - 1,
                        name,
                        arguments,
                    }
                }
                o => o,
            })
            .collect()
    }

    fn call(name: &str, arguments: Value) -> ToolOutput {
        ToolOutput::Call {
            index: 0,
            name: name.into(),
            arguments,
        }
    }

    #[test]
    fn hermes_calls_are_parsed_across_pieces() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"time\", \"arguments\": {}}\n</tool_call>";
        let want = calls(vec![
            ToolOutput::Content("Let me check.\n".into()),
            call("weather", json!({"city": "Paris"})),
            call("time", json!({})),
        ]);
        // Whole, and split at every byte boundary that is a char boundary.
        assert_eq!(run(ToolFormat::Hermes, &[text]), want);
        for cut in (1..text.len()).filter(|&c| text.is_char_boundary(c)) {
            assert_eq!(
                run(ToolFormat::Hermes, &[&text[..cut], &text[cut..]]),
                want,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn hermes_calls_without_their_tags() {
        assert_eq!(
            run(
                ToolFormat::Hermes,
                &[
                    " {\"name\": \"f\", \"arguments\": {\"a\": 1}}\n{\"name\": \"g\", \"arguments\": {}}"
                ]
            ),
            calls(vec![call("f", json!({"a": 1})), call("g", json!({}))])
        );
        // JSON that is not a call stays content.
        assert_eq!(
            run(ToolFormat::Hermes, &["{\"answer\": 42}"]),
            vec![ToolOutput::Content("{\"answer\": 42}".into())]
        );
    }

    #[test]
    fn text_that_is_not_a_call_is_content() {
        assert_eq!(
            run(ToolFormat::Hermes, &["a <tool", "_cal", "x> b"]),
            vec![ToolOutput::Content("a <tool_calx> b".into())]
        );
        // A block that does not parse, and one cut off by max_tokens.
        assert_eq!(
            run(ToolFormat::Hermes, &["<tool_call>oops</tool_call>"]),
            vec![ToolOutput::Content("<tool_call>oops</tool_call>".into())]
        );
        assert_eq!(
            run(ToolFormat::Hermes, &["<tool_call>{\"name\": \"f\", \"argu"]),
            vec![ToolOutput::Content(
                "<tool_call>{\"name\": \"f\", \"argu".into()
            )]
        );
        assert_eq!(
            run(ToolFormat::Llama3Json, &["{not json"]),
            vec![ToolOutput::Content("{not json".into())]
        );
    }

    #[test]
    fn llama3_and_mistral_formats() {
        assert_eq!(
            run(
                ToolFormat::Llama3Json,
                &[
                    "<|python_tag|>{\"name\": \"f\", \"parameters\": {\"x\": 1}}; {\"name\": \"g\", \"parameters\": \"{}\"}"
                ]
            ),
            calls(vec![call("f", json!({"x": 1})), call("g", json!({}))])
        );
        assert_eq!(
            run(
                ToolFormat::Llama3Json,
                &["{\"name\": \"f\", \"parameters\": {\"q\": \"a;b\"}}"]
            ),
            vec![call("f", json!({"q": "a;b"}))]
        );
        assert_eq!(
            run(ToolFormat::Llama3Json, &["Hello ", "there"]),
            vec![ToolOutput::Content("Hello there".into())]
        );
        assert_eq!(
            run(
                ToolFormat::Mistral,
                &["[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"a\": \"b\"}}]"]
            ),
            vec![call("f", json!({"a": "b"}))]
        );
        assert_eq!(
            run(
                ToolFormat::Mistral,
                &[" [{\"name\": \"f\", \"arguments\": {}}]"]
            ),
            vec![call("f", json!({}))]
        );
    }

    #[test]
    fn one_call_only_unless_parallel() {
        let mut p = ToolParser::new(ToolFormat::Hermes, false);
        let mut out = p.push("<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>\n<tool_call>{\"name\": \"b\", \"arguments\": {}}</tool_call>");
        out.extend(p.finish());
        assert_eq!(out, vec![call("a", json!({}))]);
    }

    #[test]
    fn grammars_name_the_demanded_functions() {
        let f = |name: &str| Function {
            name: name.into(),
            parameters: json!({"type": "object", "properties": {"q": {"type": "string"}}}),
            spec: json!({}),
        };
        let mut tools = Tools {
            functions: vec![f("search"), f("weather")],
            choice: ToolChoice::Auto,
            parallel: false,
        };
        assert_eq!(call_grammar(ToolFormat::Hermes, &tools), None);
        tools.choice = ToolChoice::Function("weather".into());
        let g = call_grammar(ToolFormat::Hermes, &tools).unwrap();
        assert!(
            g.contains("\"const\":\"weather\"") && !g.contains("search"),
            "{g}"
        );
        assert!(g.starts_with("start: call\n"), "{g}");
        tools.choice = ToolChoice::Required;
        tools.parallel = true;
        let g = call_grammar(ToolFormat::Llama3Json, &tools).unwrap();
        assert!(g.contains("\"parameters\"") && g.contains("search"), "{g}");
        assert!(g.starts_with("start: body (\"; \" body)*"), "{g}");
    }
}
