#!/usr/bin/env python3
"""Seeds for the fuzz targets, from the real test models and files:

    make_seeds.py CORPUS_DIR

gguf_header        each real GGUF rewritten small: every metadata key and
                   value it has, arrays cut to 16 entries, and two tiny
                   tensors (PyPI `gguf`, llama.cpp's writer); the first 64 KiB
                   of each real file besides
safetensors        the test checkpoints' headers over tiny data
checkpoint_config  the test checkpoints' config.json
spec               the repository's example specs
chat_template      each real model's chat template and a conversation
http1_head, chunked, request_bodies
                   requests as the README and the tests send them
"""
import json
import os
import struct
import sys

import numpy as np

import gguf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(os.environ.get("MODELSHIP_CACHE", os.path.expanduser("~/.cache/modelship")), "models")
GGUFS = ["SmolLM2-135M-Instruct.Q4_1.gguf", "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
         "gemma-3-270m.Q4_K_M.gguf"]


def write(corpus, target, name, data):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def field_value(field):
    """A reader field's value as the writer takes it (arrays cut to 16)."""
    t = field.types[0]
    if t == gguf.GGUFValueType.ARRAY:
        items = [field.parts[i] for i in field.data[:16]]
        if field.types[1] == gguf.GGUFValueType.STRING:
            return [bytes(x).decode("utf-8", "replace") for x in items]
        return [x.tolist()[0] for x in items]
    part = field.parts[field.data[0]]
    if t == gguf.GGUFValueType.STRING:
        return bytes(part).decode("utf-8", "replace")
    return part.tolist()[0]


def small_gguf(path, out):
    reader = gguf.GGUFReader(path)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    w = gguf.GGUFWriter(out, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        t = field.types[0]
        value = field_value(field)
        if t == gguf.GGUFValueType.ARRAY:
            w.add_array(name, value)
        elif t == gguf.GGUFValueType.STRING:
            w.add_string(name, value)
        else:
            w.add_key_value(name, value, t)
    w.add_tensor("token_embd.weight", np.ones((16, 8), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return reader


def main(corpus):
    for name in GGUFS:
        path = os.path.join(MODELS, name)
        out = os.path.join(corpus, "gguf_header", name + ".small")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        reader = small_gguf(path, out)
        with open(path, "rb") as f:
            write(corpus, "gguf_header", name + ".head", f.read(64 << 10))
        template = reader.fields.get("tokenizer.chat_template")
        if template is not None:
            text = bytes(template.parts[template.data[0]]).decode()
            write(corpus, "chat_template", name, text.encode() + b"\0You are terse.\x01What is 2+2?\x014\x01And 3+3?")

    hf = os.path.join(MODELS, "hf")
    for model in sorted(os.listdir(hf)):
        config = os.path.join(hf, model, "config.json")
        if os.path.exists(config):
            with open(config, "rb") as f:
                write(corpus, "checkpoint_config", model, f.read())
        for st in sorted(os.listdir(os.path.join(hf, model))):
            if not st.endswith(".safetensors"):
                continue
            with open(os.path.join(hf, model, st), "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            # The real names, dtypes and layout over one element per tensor.
            small, at = {}, 0
            for tname, e in sorted(header.items()):
                if tname == "__metadata__":
                    small[tname] = e
                    continue
                width = {"F32": 4, "F16": 2, "BF16": 2}.get(e["dtype"], 4)
                small[tname] = {"dtype": e["dtype"], "shape": [1], "data_offsets": [at, at + width]}
                at += width
                if len(small) >= 24:
                    break
            body = json.dumps(small).encode()
            write(corpus, "safetensors", f"{model}-{st}", struct.pack("<Q", len(body)) + body + bytes(at))

    for spec in ["examples/minilm-kubernetes.yaml"]:
        with open(os.path.join(ROOT, spec), "rb") as f:
            write(corpus, "spec", os.path.basename(spec), f.read())
    write(corpus, "spec", "minimal.yaml",
          "apiVersion: modelship.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: smol}\n"
          "spec:\n  model: {source: m.gguf, task: generate}\n  replicas: 1\n"
          "  rollout: {strategy: canary, canary: {steps: [{weight: 10, pause: 30s}]}}\n")

    heads = {
        "get": "GET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n",
        "post": "POST /v1/embeddings HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                "Content-Length: 17\r\nAuthorization: Bearer k\r\nConnection: keep-alive, X-Trace\r\n"
                "X-Trace: 1\r\n\r\n",
        "chunked": "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
                   "Expect: 100-continue\r\n\r\n",
        "http10": "GET /v2/health/ready HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    }
    for name, head in heads.items():
        write(corpus, "http1_head", name, head)
    write(corpus, "chunked", "two", b"\x03" + b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n")
    write(corpus, "chunked", "one", b"\x01" + b"a\r\n0123456789\r\n0\r\n\r\n")

    bodies = {
        "embeddings": {"input": ["modelship serves real models", "a second"], "model": "minilm",
                       "encoding_format": "base64", "truncate": True},
        "completions": {"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0, "stream": True,
                        "stop": ["\n"], "stream_options": {"include_usage": True}, "seed": 7},
        "chat": {"messages": [{"role": "system", "content": "be brief"},
                              {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                 "max_completion_tokens": 8, "top_p": 0.9, "top_k": 40, "n": 1},
        "infer": {"id": "1", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                                         "data": ["a", "b"]}], "parameters": {"max_tokens": 4}},
    }
    for name, body in bodies.items():
        write(corpus, "request_bodies", name, json.dumps(body))


if __name__ == "__main__":
    main(sys.argv[1])
