#!/usr/bin/env python3
"""An independent reference for BERT sentence embeddings: the forward pass
written out in numpy (float64), one text at a time (no padding), with the
pooling and normalization of the model's sentence-transformers modules.

    echo '["text", ...]' | python bert_numpy.py MODEL_DIR > vectors.json

The Rust tests compare modelship's embeddings with these at cosine >= 0.9999.
"""
import json
import math
import os
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

erf = np.vectorize(math.erf)


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


class Bert:
    def __init__(self, model_dir):
        cfg = json.load(open(os.path.join(model_dir, "config.json")))
        raw = load_file(os.path.join(model_dir, "model.safetensors"))
        self.w = {k.removeprefix("bert."): v.astype(np.float64) for k, v in raw.items()}
        self.heads = cfg["num_attention_heads"]
        self.layers = cfg["num_hidden_layers"]
        self.eps = cfg["layer_norm_eps"]
        self.pooling, self.normalize = self._modules(model_dir)
        self.tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self.tok.no_truncation()
        self.tok.no_padding()

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
                if pc.get("pooling_mode_cls_token"):
                    pooling = "cls"
                elif pc.get("pooling_mode_max_tokens"):
                    pooling = "max"
        return pooling, normalize

    def linear(self, x, name):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def embed(self, text):
        ids = np.array(self.tok.encode(text).ids)
        w = self.w
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][: len(ids)]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        n, h = x.shape
        d = h // self.heads
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            q = self.linear(x, p + "attention.self.query").reshape(n, self.heads, d).transpose(1, 0, 2)
            k = self.linear(x, p + "attention.self.key").reshape(n, self.heads, d).transpose(1, 0, 2)
            v = self.linear(x, p + "attention.self.value").reshape(n, self.heads, d).transpose(1, 0, 2)
            s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(1, 0, 2).reshape(n, h)
            a = self.linear(ctx, p + "attention.output.dense")
            x = layer_norm(x + a, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], self.eps)
            f = self.linear(x, p + "intermediate.dense")
            f = 0.5 * f * (1.0 + erf(f / math.sqrt(2.0)))
            f = self.linear(f, p + "output.dense")
            x = layer_norm(x + f, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], self.eps)
        if self.pooling == "cls":
            v = x[0]
        elif self.pooling == "max":
            v = x.max(0)
        else:
            v = x.mean(0)
        if self.normalize:
            v = v / max(np.linalg.norm(v), 1e-12)
        return v.tolist()


def main():
    model = Bert(sys.argv[1])
    texts = json.load(sys.stdin)
    json.dump([model.embed(t) for t in texts], sys.stdout)


if __name__ == "__main__":
    main()
