"""Encoders beyond MiniLM (issue 18): all-mpnet-base-v2 texts/s at
concurrency 1 and 32, as f32 safetensors and as our q8_0 GGUF, the batching
gain, and cross-encoder rerank pairs/s; ONNX Runtime running the int8
MiniLM beside them in the same run, on the same texts and threads, as the
fixed point (ratios to it are what compare across runs).

The reranker is MiniLM-L6's encoder with a random one-label head
(BertForSequenceClassification): the shape of ms-marco-MiniLM-L-6-v2, which
no package ships, so its pairs/s is that model's. Run by scripts/bench.sh
(BENCH_ONLY=encoders for this table only)."""
import http.client
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from safetensors.numpy import load_file, save_file

from paths import BIN, MINILM, MPNET, OUT, ROOT, THREADS
from run import SECONDS, embed_load, first_success, run_clients, sentences, start_server, stop, post

ONNX = f"{os.path.dirname(MINILM)}/all-MiniLM-L6-v2-int8/model.onnx"
WORK = f"{OUT}/encoders"


def quantized(model, typ, name):
    out = f"{WORK}/{name}.{typ}.gguf"
    if not os.path.exists(out):
        subprocess.run([BIN, "quantize", model, "--to", typ, "-o", out], check=True, stdout=subprocess.DEVNULL)
    return out


def minilm_reranker():
    """MiniLM's weights under `bert.`, a random pooler and one-label head."""
    d = f"{WORK}/minilm-reranker"
    if os.path.exists(d):
        return d
    os.makedirs(d)
    w = {f"bert.{k}": v for k, v in load_file(f"{MINILM}/model.safetensors").items()}
    rng = np.random.default_rng(0)
    h = w["bert.embeddings.word_embeddings.weight"].shape[1]
    for name, shape in [("bert.pooler.dense.weight", (h, h)), ("bert.pooler.dense.bias", (h,)),
                        ("classifier.weight", (1, h)), ("classifier.bias", (1,))]:
        w[name] = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    save_file(w, f"{d}/model.safetensors")
    cfg = json.load(open(f"{MINILM}/config.json"))
    cfg["architectures"] = ["BertForSequenceClassification"]
    cfg["id2label"] = {"0": "LABEL_0"}
    json.dump(cfg, open(f"{d}/config.json", "w"))
    shutil.copy(f"{MINILM}/tokenizer.json", d)
    return d


def rerank_load(port, texts, concurrency, seconds, documents=32):
    """Each client sends one query with `documents` candidates, back to back;
    returns pairs/s."""
    done = [0] * concurrency
    deadline = time.perf_counter() + seconds

    def client(k):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        i = k * documents
        while time.perf_counter() < deadline:
            docs = [texts[(i + j) % len(texts)] for j in range(documents)]
            status, body = post(conn, "/rerank", {"query": texts[i % len(texts)], "texts": docs, "truncate": True})
            if status != 200:
                raise RuntimeError(body[:200])
            done[k] += documents
            i += documents * concurrency

    elapsed = run_clients(client, concurrency)
    return sum(done) / elapsed


def main():
    os.makedirs(WORK, exist_ok=True)
    texts = sentences()
    json.dump(texts, open(f"{WORK}/texts.json", "w"))
    r = {"threads": THREADS, "seconds": SECONDS}
    ort = json.loads(subprocess.check_output([sys.executable, f"{ROOT}/scripts/bench/ort_embed.py", ONNX,
                                              f"{MINILM}/tokenizer.json", f"{WORK}/texts.json", str(THREADS),
                                              str(SECONDS)]))
    r["ort_b1"], r["ort_b32"] = ort["batch1_tps"], ort["batch32_tps"]
    cases = [("minilm_f32", MINILM), ("mpnet_f32", MPNET), ("mpnet_q8_0", quantized(MPNET, "q8_0", "mpnet"))]
    for i, (label, model) in enumerate(cases):
        port = 18401 + i
        proc, t0 = start_server(model, port)
        try:
            first_success(port, "/v1/embeddings", {"input": "warm up"}, t0)
            embed_load(port, texts, 4, 2)  # warm-up
            r[f"{label}_c1"] = embed_load(port, texts, 1, SECONDS)
            r[f"{label}_c32"] = embed_load(port, texts, 32, SECONDS)
        finally:
            stop(proc)
        print(f"  {label}: c1 {r[f'{label}_c1']:.1f}, c32 {r[f'{label}_c32']:.1f} texts/s", file=sys.stderr)
    proc, t0 = start_server(minilm_reranker(), 18410)
    try:
        first_success(18410, "/rerank", {"query": "q", "texts": ["warm up"]}, t0)
        r["rerank_c1"] = rerank_load(18410, texts, 1, SECONDS)
        r["rerank_c4"] = rerank_load(18410, texts, 4, SECONDS)
    finally:
        stop(proc)
    json.dump(r, open(f"{WORK}/results.json", "w"), indent=1)
    f = lambda x: f"{x:,.1f}"
    ratio = lambda a, b: f"{a / b:.2f}×"
    print(f"""| encoders ({r['threads']} threads, {r['seconds']:.0f} s per point) | concurrency 1 (texts/s) | concurrency 32 (texts/s) | batching gain (32 / 1) | vs ORT MiniLM int8, batch 1 / batch 32 |
|---|---:|---:|---:|---:|
| ONNX Runtime, MiniLM int8, in-process (the fixed point) | {f(r['ort_b1'])} | {f(r['ort_b32'])} | {ratio(r['ort_b32'], r['ort_b1'])} | 1.00× / 1.00× |
| modelship, MiniLM f32, HTTP | {f(r['minilm_f32_c1'])} | {f(r['minilm_f32_c32'])} | {ratio(r['minilm_f32_c32'], r['minilm_f32_c1'])} | {ratio(r['minilm_f32_c1'], r['ort_b1'])} / {ratio(r['minilm_f32_c32'], r['ort_b32'])} |
| modelship, MPNet f32, HTTP | {f(r['mpnet_f32_c1'])} | {f(r['mpnet_f32_c32'])} | {ratio(r['mpnet_f32_c32'], r['mpnet_f32_c1'])} | {ratio(r['mpnet_f32_c1'], r['ort_b1'])} / {ratio(r['mpnet_f32_c32'], r['ort_b32'])} |
| modelship, MPNet q8_0, HTTP | {f(r['mpnet_q8_0_c1'])} | {f(r['mpnet_q8_0_c32'])} | {ratio(r['mpnet_q8_0_c32'], r['mpnet_q8_0_c1'])} | {ratio(r['mpnet_q8_0_c1'], r['ort_b1'])} / {ratio(r['mpnet_q8_0_c32'], r['ort_b32'])} |

| rerank (MiniLM-L6 cross-encoder, f32; one query with 32 documents per request) | pairs/s | vs ORT MiniLM int8 batch 32 (texts/s) |
|---|---:|---:|
| concurrency 1 | {f(r['rerank_c1'])} | {ratio(r['rerank_c1'], r['ort_b32'])} |
| concurrency 4 | {f(r['rerank_c4'])} | {ratio(r['rerank_c4'], r['ort_b32'])} |
""")


if __name__ == "__main__":
    main()
