#!/usr/bin/env python3
"""An independent reference for transformer encoders — BERT, RoBERTa,
XLM-RoBERTa, MPNet — written out in numpy (float64), one input at a time
(no padding): sentence embeddings with the pooling, normalization and
prompts of the model's sentence-transformers files, or a
sequence-classification head's logits and scores.

    echo '[INPUT, ...]' | python encoder_numpy.py MODEL_DIR [--max-length N] > out.json

An INPUT is a text, {"text": T, "prompt_name": P}, or {"pair": [A, B]}.
With --max-length, inputs are cut by the tokenizer's own truncation
(longest_first) to N tokens, special tokens included. Prints one vector per
input for an embedding model, and {"logits": [...], "scores": [...]} per
input for a classifier.

The Rust tests compare modelship's outputs with these: embeddings at cosine
>= 0.9999, scores within 1e-4.
"""
import json
import math
import os
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

erf = np.vectorize(math.erf)

PREFIX = {"bert": "bert.", "roberta": "roberta.", "xlm-roberta": "roberta.", "mpnet": "mpnet."}


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def relative_bucket(relative, buckets=32, max_distance=128):
    """MPNet's (T5's) bucket of key minus query position, in float32 as
    PyTorch computes it."""
    half = buckets // 2
    n = -relative
    ret = half if n < 0 else 0
    n = abs(n)
    exact = half // 2
    if n < exact:
        return ret + n
    log = np.float32(np.log(np.float32(n) / np.float32(exact)))
    val = exact + int(log / np.float32(math.log(max_distance / exact)) * np.float32(half - exact))
    return ret + min(val, half - 1)


class Encoder:
    def __init__(self, model_dir, max_length=None):
        cfg = json.load(open(os.path.join(model_dir, "config.json")))
        self.family = cfg["model_type"]
        prefix = PREFIX[self.family]
        raw = {}
        for f in sorted(os.listdir(model_dir)):
            if f.endswith(".safetensors"):
                raw.update(load_file(os.path.join(model_dir, f)))
        self.w = {k.removeprefix(prefix): v.astype(np.float64) for k, v in raw.items()}
        self.heads = cfg["num_attention_heads"]
        self.layers = cfg["num_hidden_layers"]
        self.eps = cfg.get("layer_norm_eps", 1e-12 if self.family == "bert" else 1e-5)
        pad = cfg.get("pad_token_id", 1)
        self.offset = 0 if self.family == "bert" else pad + 1
        self.buckets = cfg.get("relative_attention_num_buckets", 32)
        archs = cfg.get("architectures") or []
        self.classifier = any(a.endswith("ForSequenceClassification") for a in archs)
        if self.classifier:
            id2label = cfg.get("id2label") or {str(i): f"LABEL_{i}" for i in range(cfg["num_labels"])}
            self.labels = [id2label[str(i)] for i in range(len(id2label))]
            self.problem = cfg.get("problem_type")
        self.pooling, self.normalize = self._modules(model_dir)
        self.prompts, self.default_prompt = self._prompts(model_dir)
        self.tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self.tok.no_padding()
        if max_length:
            self.tok.enable_truncation(max_length, strategy="longest_first")
        else:
            self.tok.no_truncation()

    @staticmethod
    def _modules(model_dir):
        path = os.path.join(model_dir, "modules.json")
        if not os.path.exists(path):
            return "mean", False
        modules = json.load(open(path))
        normalize = any(m["type"].endswith(".Normalize") for m in modules)
        pooling = "mean"
        for m in modules:
            if m["type"].endswith(".Pooling"):
                pc = json.load(open(os.path.join(model_dir, m["path"], "config.json")))
                for key, name in [("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                                  ("pooling_mode_max_tokens", "max"),
                                  ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
                                  ("pooling_mode_lasttoken", "last")]:
                    if pc.get(key):
                        pooling = name
                        break
        return pooling, normalize

    @staticmethod
    def _prompts(model_dir):
        path = os.path.join(model_dir, "config_sentence_transformers.json")
        if not os.path.exists(path):
            return {}, None
        c = json.load(open(path))
        return c.get("prompts") or {}, c.get("default_prompt_name")

    def linear(self, x, name):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def encode(self, item):
        if isinstance(item, str):
            item = {"text": item}
        if "pair" in item:
            enc = self.tok.encode(item["pair"][0], item["pair"][1])
        else:
            name = item.get("prompt_name", self.default_prompt)
            text = (self.prompts[name] if name else "") + item["text"]
            enc = self.tok.encode(text)
        # RoBERTa-family models are not given the tokenizer's segments.
        types = enc.type_ids if self.family == "bert" else [0] * len(enc.ids)
        return np.array(enc.ids), np.array(types)

    def forward(self, ids, types):
        w = self.w
        n = len(ids)
        x = w["embeddings.word_embeddings.weight"][ids]
        x = x + w["embeddings.position_embeddings.weight"][self.offset:self.offset + n]
        if "embeddings.token_type_embeddings.weight" in w:
            x = x + w["embeddings.token_type_embeddings.weight"][types]
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        h = x.shape[1]
        d = h // self.heads
        bias = 0.0
        if self.family == "mpnet":
            table = w["encoder.relative_attention_bias.weight"]  # (buckets, heads)
            rel = np.array([[relative_bucket(k - q, self.buckets) for k in range(n)] for q in range(n)])
            bias = table[rel].transpose(2, 0, 1)  # (heads, n, n)
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            if self.family == "mpnet":
                names = ["attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o",
                         "attention.LayerNorm"]
            else:
                names = ["attention.self.query", "attention.self.key", "attention.self.value",
                         "attention.output.dense", "attention.output.LayerNorm"]
            q, k, v = (self.linear(x, p + nm).reshape(n, self.heads, d).transpose(1, 0, 2) for nm in names[:3])
            s = softmax(q @ k.transpose(0, 2, 1) / math.sqrt(d) + bias)
            ctx = (s @ v).transpose(1, 0, 2).reshape(n, h)
            a = self.linear(ctx, p + names[3])
            x = layer_norm(x + a, w[p + names[4] + ".weight"], w[p + names[4] + ".bias"], self.eps)
            f = self.linear(x, p + "intermediate.dense")
            f = 0.5 * f * (1.0 + erf(f / math.sqrt(2.0)))
            f = self.linear(f, p + "output.dense")
            x = layer_norm(x + f, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], self.eps)
        return x

    def run(self, item):
        ids, types = self.encode(item)
        x = self.forward(ids, types)
        if self.classifier:
            if self.family == "bert":
                hid = np.tanh(self.linear(x[0], "pooler.dense"))
                logits = self.linear(hid, "classifier")
            else:
                hid = np.tanh(self.linear(x[0], "classifier.dense"))
                logits = self.linear(hid, "classifier.out_proj")
            if self.problem == "regression":
                scores = logits
            elif self.problem == "multi_label_classification" or (self.problem is None and len(logits) == 1):
                scores = 1.0 / (1.0 + np.exp(-logits))
            else:
                scores = softmax(logits)
            return {"logits": logits.tolist(), "scores": scores.tolist(), "tokens": len(ids)}
        if self.pooling == "cls":
            v = x[0]
        elif self.pooling == "max":
            v = x.max(0)
        elif self.pooling == "last":
            v = x[-1]
        elif self.pooling == "mean_sqrt_len":
            v = x.sum(0) / math.sqrt(len(x))
        else:
            v = x.mean(0)
        if self.normalize:
            v = v / max(np.linalg.norm(v), 1e-12)
        return v.tolist()


def main():
    args = sys.argv[1:]
    max_length = None
    if "--max-length" in args:
        i = args.index("--max-length")
        max_length = int(args[i + 1])
        del args[i:i + 2]
    model = Encoder(args[0], max_length)
    items = json.load(sys.stdin)
    json.dump([model.run(t) for t in items], sys.stdout)


if __name__ == "__main__":
    main()
