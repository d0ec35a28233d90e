"""ONNX Runtime on the int8 all-MiniLM-L6-v2: texts/s at batch 1 and batch 32
on the same texts and threads as the modelship measurement. Prints JSON."""
import json
import sys
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

onnx, tokenizer_json, texts_file, threads, seconds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
texts = json.load(open(texts_file))
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
opts.inter_op_num_threads = 1
sess = ort.InferenceSession(onnx, opts, providers=["CPUExecutionProvider"])
names = [i.name for i in sess.get_inputs()]
tok = Tokenizer.from_file(tokenizer_json)
# tokenizer.json pads every input to 128; pad each batch to its longest only,
# as modelship's scheduler does.
tok.no_padding()
tok.enable_truncation(512)


def run(batch):
    enc = tok.encode_batch(batch)
    n = max(len(e.ids) for e in enc)
    ids = np.zeros((len(batch), n), dtype=np.int64)
    mask = np.zeros((len(batch), n), dtype=np.int64)
    for i, e in enumerate(enc):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    out = sess.run(None, {k: v for k, v in feed.items() if k in names})[0]
    # mean pooling + normalize, as the model's sentence-transformers modules say
    if out.ndim == 3:
        m = mask[..., None]
        out = (out * m).sum(1) / m.sum(1)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def throughput(batch_size):
    run(texts[:batch_size])  # warm-up
    done, i, t = 0, 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        batch = [texts[(i + k) % len(texts)] for k in range(batch_size)]
        run(batch)
        done += batch_size
        i += batch_size
    return done / (time.perf_counter() - t)


print(json.dumps({"batch1_tps": round(throughput(1), 1), "batch32_tps": round(throughput(32), 1)}))
