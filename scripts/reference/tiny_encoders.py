#!/usr/bin/env python3
"""Small random-weight Hugging Face encoder checkpoints for the families and
heads no package ships a model of, each checked against
scripts/reference/encoder_numpy.py by the Rust tests.

    $MODELSHIP_CACHE/venv/bin/python scripts/reference/tiny_encoders.py MINILM_DIR MPNET_DIR OUTDIR

Writes OUTDIR/<name>/ (config.json, model.safetensors, tokenizer.json and
sentence-transformers files where the model has them):

  roberta-mean        RobertaModel, byte-level BPE, mean pooling + Normalize,
                      prompts `query` / `passage`
  xlm-roberta-cls     XLMRobertaModel, SentencePiece Unigram tokenizer, CLS
                      pooling without Normalize, a default prompt
  bert-max            BertModel (MiniLM's WordPiece vocabulary), max pooling
  mpnet-last          MPNetModel (all-mpnet-base-v2's vocabulary), last-token
                      pooling + Normalize
  bert-reranker       BertForSequenceClassification, one label (a cross-encoder)
  bert-classifier     BertForSequenceClassification, three labels, softmax
  roberta-multilabel  RobertaForSequenceClassification, four labels,
                      multi_label_classification (sigmoid)
  mpnet-reranker      MPNetForSequenceClassification, one label

Every model has 2 layers of width 64 and 64 positions (past the offset), so
long inputs need truncation. Weights are seeded: the same files each run.
"""
import json
import os
import shutil
import sys

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

WIDTH, HEADS, LAYERS, FF, CONTEXT = 64, 4, 2, 128, 64

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the stage tonight.",
    "Retrieval systems rank documents by their relevance to a query.",
    "Le renard brun saute par-dessus le chien paresseux.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Quantization trades a little quality for a lot of memory.",
    "naïve café: unicode & punctuation! 1234567890",
    "What is the capital of France? Paris is the capital of France.",
] * 20


def byte_level_bpe():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, show_progress=False, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return tok


def unigram():
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=300, show_progress=False, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>")
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    return tok


def weights(rng, family, vocab, types, labels, prefix):
    """Random tensors under HF's names for `family` (an encoder with a
    classification head when `labels`)."""
    std = 0.2
    w = {}

    def mat(name, *shape):
        w[name] = (rng.standard_normal(shape) * std).astype(np.float32)

    def norm(name):
        w[name + ".weight"] = (1.0 + rng.standard_normal(WIDTH) * 0.1).astype(np.float32)
        w[name + ".bias"] = (rng.standard_normal(WIDTH) * 0.1).astype(np.float32)

    def dense(name, out, inp):
        mat(name + ".weight", out, inp)
        mat(name + ".bias", out)

    offset = 0 if family == "bert" else 2
    mat(prefix + "embeddings.word_embeddings.weight", vocab, WIDTH)
    mat(prefix + "embeddings.position_embeddings.weight", CONTEXT + offset, WIDTH)
    if types:
        mat(prefix + "embeddings.token_type_embeddings.weight", types, WIDTH)
    norm(prefix + "embeddings.LayerNorm")
    for i in range(LAYERS):
        p = f"{prefix}encoder.layer.{i}."
        if family == "mpnet":
            for n in "qkvo":
                dense(p + f"attention.attn.{n}", WIDTH, WIDTH)
            norm(p + "attention.LayerNorm")
        else:
            for n in ["query", "key", "value"]:
                dense(p + f"attention.self.{n}", WIDTH, WIDTH)
            dense(p + "attention.output.dense", WIDTH, WIDTH)
            norm(p + "attention.output.LayerNorm")
        dense(p + "intermediate.dense", FF, WIDTH)
        dense(p + "output.dense", WIDTH, FF)
        norm(p + "output.LayerNorm")
    if family == "mpnet":
        mat(prefix + "encoder.relative_attention_bias.weight", 32, HEADS)
    if labels and family == "bert":
        dense(prefix + "pooler.dense", WIDTH, WIDTH)
        dense("classifier", labels, WIDTH)
    elif labels:
        dense("classifier.dense", WIDTH, WIDTH)
        dense("classifier.out_proj", labels, WIDTH)
    elif family in ("bert", "roberta"):
        # A base model's pooler: unused for embeddings, dropped at load.
        dense(prefix + "pooler.dense", WIDTH, WIDTH)
    return w


def write(out, name, family, tokenizer, seed, pooling=None, normalize=False, prompts=None,
          default_prompt=None, labels=None, problem_type=None):
    rng = np.random.default_rng(seed)
    d = os.path.join(out, name + ".part")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    if isinstance(tokenizer, str):
        shutil.copy(os.path.join(tokenizer, "tokenizer.json"), os.path.join(d, "tokenizer.json"))
        vocab = Tokenizer.from_file(os.path.join(d, "tokenizer.json")).get_vocab_size()
    else:
        tokenizer.save(os.path.join(d, "tokenizer.json"))
        vocab = tokenizer.get_vocab_size()
    model_type = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "xlm-roberta", "mpnet": "mpnet"}[family]
    arch_name = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta", "mpnet": "MPNet"}[family]
    types = {"bert": 2, "roberta": 1, "xlm-roberta": 1, "mpnet": 0}[family]
    kind = "ForSequenceClassification" if labels else "Model"
    cfg = {
        "architectures": [arch_name + kind], "model_type": model_type, "hidden_size": WIDTH,
        "num_attention_heads": HEADS, "num_hidden_layers": LAYERS, "intermediate_size": FF,
        "hidden_act": "gelu", "vocab_size": vocab, "layer_norm_eps": 1e-12 if family == "bert" else 1e-5,
        "max_position_embeddings": CONTEXT + (0 if family == "bert" else 2),
    }
    if family == "bert":
        cfg["type_vocab_size"] = 2
        cfg["pad_token_id"] = 0
    elif family in ("roberta", "xlm-roberta"):
        cfg.update(type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    else:
        cfg.update(pad_token_id=1, relative_attention_num_buckets=32)
    if labels:
        cfg["id2label"] = {str(i): l for i, l in enumerate(labels)}
        cfg["label2id"] = {l: i for i, l in enumerate(labels)}
        if problem_type:
            cfg["problem_type"] = problem_type
    prefix = "" if not labels else {"bert": "bert.", "mpnet": "mpnet."}.get(family, "roberta.")
    save_file(weights(rng, family, vocab, types, len(labels or []), prefix), os.path.join(d, "model.safetensors"))
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    if pooling:
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                            "type": "sentence_transformers.models.Normalize"})
        json.dump(modules, open(os.path.join(d, "modules.json"), "w"), indent=2)
        os.makedirs(os.path.join(d, "1_Pooling"))
        modes = {m: pooling == m for m in ["cls_token", "mean_tokens", "max_tokens", "lasttoken"]}
        pc = {"word_embedding_dimension": WIDTH, **{f"pooling_mode_{m}": on for m, on in modes.items()}}
        json.dump(pc, open(os.path.join(d, "1_Pooling", "config.json"), "w"), indent=2)
    if prompts is not None:
        json.dump({"prompts": prompts, "default_prompt_name": default_prompt},
                  open(os.path.join(d, "config_sentence_transformers.json"), "w"), indent=2)
    final = os.path.join(out, name)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(d, final)


def main():
    minilm, mpnet, out = sys.argv[1:4]
    os.makedirs(out, exist_ok=True)
    write(out, "roberta-mean", "roberta", byte_level_bpe(), 1, pooling="mean_tokens", normalize=True,
          prompts={"query": "query: ", "passage": "passage: "})
    write(out, "xlm-roberta-cls", "xlm-roberta", unigram(), 2, pooling="cls_token",
          prompts={"query": "Represent this sentence for searching: ", "document": ""}, default_prompt="query")
    write(out, "bert-max", "bert", minilm, 3, pooling="max_tokens")
    write(out, "mpnet-last", "mpnet", mpnet, 4, pooling="lasttoken", normalize=True)
    write(out, "bert-reranker", "bert", minilm, 5, labels=["LABEL_0"])
    write(out, "bert-classifier", "bert", minilm, 6, labels=["negative", "neutral", "positive"])
    write(out, "roberta-multilabel", "roberta", byte_level_bpe(), 7, labels=["a", "b", "c", "d"],
          problem_type="multi_label_classification")
    write(out, "mpnet-reranker", "mpnet", mpnet, 8, labels=["relevance"])


if __name__ == "__main__":
    main()
