#!/usr/bin/env python3
"""Real OpenAI clients against a modelship replica or gateway:

    python tests/clients/openai_clients.py BASE_URL [MODEL]

BASE_URL ends in /v1; MODEL defaults to the first of GET /v1/models. The
OpenAI Python SDK (tools with a round trip, `chat.completions.parse` with a
Pydantic model, logprobs, n=2, streamed tool calls, completions with
several prompts) and LangChain's `langchain-openai` (`bind_tools`,
`with_structured_output`). Each check asserts; the exit status says
whether all passed. Installed by scripts/setup-peers.sh.
"""
import json
import sys

from openai import OpenAI
from pydantic import BaseModel

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city's name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
QUESTION = "What is the weather in Paris, in celsius?"


class City(BaseModel):
    name: str
    country: str
    population: int


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f": {detail}"), flush=True)
    if not ok:
        global failed
        failed = True


failed = False


def sdk(client, model):
    # Tools, and a round trip with the tool's answer.
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], tools=[WEATHER],
        temperature=0, max_tokens=80)
    msg = r.choices[0].message
    calls = msg.tool_calls or []
    check("sdk tool call", r.choices[0].finish_reason == "tool_calls" and len(calls) == 1
          and calls[0].function.name == "get_weather"
          and json.loads(calls[0].function.arguments).get("city") == "Paris", r)
    if calls:
        r2 = client.chat.completions.create(
            model=model, tools=[WEATHER], temperature=0, max_tokens=60,
            messages=[{"role": "user", "content": QUESTION}, msg,
                      {"role": "tool", "tool_call_id": calls[0].id,
                       "content": json.dumps({"temperature": 21, "sky": "sunny"})}])
        answer = r2.choices[0].message.content or ""
        check("sdk tool round trip", "21" in answer, answer)

    # Structured output through the SDK's own helper.
    p = client.chat.completions.parse(
        model=model, response_format=City, temperature=0, max_tokens=80,
        messages=[{"role": "user", "content": "Describe Paris as JSON: name, country, population."}])
    parsed = p.choices[0].message.parsed
    check("sdk parse (pydantic)", isinstance(parsed, City), p)

    # Log-probabilities.
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello."}], temperature=0,
        max_tokens=8, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content if r.choices[0].logprobs else []
    check("sdk logprobs", len(content) > 0 and all(len(t.top_logprobs) == 2 for t in content)
          and all(t.logprob <= 0 for t in content), r)

    # n = 2.
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Name an animal."}], n=2,
        temperature=1.0, seed=5, max_tokens=8)
    check("sdk n=2", [c.index for c in r.choices] == [0, 1], r)

    # Streamed tool calls, accumulated as the SDK's users do.
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], tools=[WEATHER],
        temperature=0, max_tokens=80, stream=True)
    names, args, finish = {}, {}, None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        for tc in choice.delta.tool_calls or []:
            names[tc.index] = names.get(tc.index, "") + (tc.function.name or "")
            args[tc.index] = args.get(tc.index, "") + (tc.function.arguments or "")
        finish = choice.finish_reason or finish
    check("sdk streamed tool calls", finish == "tool_calls" and names.get(0) == "get_weather"
          and json.loads(args.get(0, "{}")).get("city") == "Paris", (names, args, finish))

    # Completions: two prompts, echo and logprobs.
    r = client.completions.create(
        model=model, prompt=["The capital of France is", "1, 2, 3,"], max_tokens=4,
        temperature=0, echo=True, logprobs=2)
    check("sdk completions", len(r.choices) == 2
          and r.choices[0].text.startswith("The capital of France is")
          and r.choices[1].logprobs.token_logprobs[0] is None, r)


def langchain(base_url, model):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str, unit: str) -> str:
        """The current weather in a city; unit is celsius or fahrenheit."""
        return "21"

    llm = ChatOpenAI(base_url=base_url, api_key="unused", model=model, temperature=0,
                     max_tokens=80)
    r = llm.bind_tools([get_weather]).invoke(QUESTION)
    check("langchain bind_tools", len(r.tool_calls) == 1 and r.tool_calls[0]["name"] == "get_weather"
          and r.tool_calls[0]["args"].get("city") == "Paris", r)
    structured = llm.with_structured_output(City).invoke(
        "Describe Paris as JSON: name, country, population.")
    check("langchain with_structured_output", isinstance(structured, City), structured)


def main():
    base_url = sys.argv[1]
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    model = sys.argv[2] if len(sys.argv) > 2 else client.models.list().data[0].id
    sdk(client, model)
    langchain(base_url, model)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
