"""Structured pruning and dropped layers (issue 21), in docs/benchmarks.md.

For MiniLM and SmolLM2: the original, q8_0, `prune --ffn/--heads` and
`distill --student-layers` (untrained, `--steps 0`): file size, parameters,
quality against the original on held-out text (Hamlet, not the built-in
corpus that ranks the channels and heads), and serving throughput measured
by `modelship bench` in the same run, as a ratio to the original's.

BENCH_ONLY=structured. Prints markdown; leaves nothing behind."""
import json
import os
import shutil
import subprocess

from paths import BIN, MINILM, OUT, SMOL, TEXT

WORK = f"{OUT}/structured"


def cli(*args):
    return subprocess.run([BIN, *args], check=True, capture_output=True, text=True).stdout


def parameters(out):
    for line in out.splitlines():
        if line.startswith("parameters"):
            return line.split()[-1]
    return "?"


def quality(model, reference, generate):
    extra = ["--chunks", "6", "--ctx", "256"] if generate else ["--sentences", "128"]
    r = json.loads(cli("eval", model, "--reference", reference, "--corpus", TEXT, "--json", *extra))
    if generate:
        return f"PPL {r['perplexity']:.2f} (ref {r['reference_perplexity']:.2f}), KLD {r['kld']:.3f}, top-1 {100 * r['top1_agreement']:.1f}%"
    return f"cosine {r['cosine_mean']:.4f} (min {r['cosine_min']:.3f}), spearman {r['spearman']:.3f}"


def speed(model):
    r = json.loads(cli("bench", model, "--levels", "4", "--seconds", "4", "--json"))
    return r["points"][0]["rps"]


def table(name, reference, variants, generate):
    print(f"\n{name} (reference: {os.path.basename(reference)})\n")
    print("| variant | file MiB | parameters | quality on held-out text | throughput vs reference |")
    print("|---|---|---|---|---|")
    base = speed(reference)
    for label, path, params in variants:
        mib = os.path.getsize(path) / 2**20
        ratio = speed(path) / base
        print(f"| {label} | {mib:.1f} | {params} | {quality(path, reference, generate)} | {ratio:.2f}x |")


def main():
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    try:
        for name, model, to, cuts, students in [
            ("MiniLM-L6", MINILM, "f32", [("0.25", "0.25"), ("0.5", "0")], ["4"]),
            ("SmolLM2-135M", SMOL, "f16", [("0.25", "0.34"), ("0.5", "0")], ["24"]),
        ]:
            generate = model.endswith(".gguf")
            ref = f"{WORK}/{name}-{to}.gguf"
            out = cli("quantize", model, "--to", to, "-o", ref)
            variants = [(to, ref, "all")]
            q8 = f"{WORK}/{name}-q8_0.gguf"
            cli("quantize", model, "--to", "q8_0", "-o", q8)
            variants.append(("q8_0", q8, "all"))
            for ffn, heads in cuts:
                p = f"{WORK}/{name}-ffn{ffn}-heads{heads}.gguf"
                out = cli("prune", ref, "--ffn", ffn, "--heads", heads, "--to", to, "-o", p)
                variants.append((f"prune --ffn {ffn} --heads {heads}", p, parameters(out)))
            for n in students:
                p = f"{WORK}/{name}-{n}layers.gguf"
                out = cli("distill", ref, "--student-layers", n, "--to", to, "-o", p)
                variants.append((f"distill --student-layers {n} --steps 0", p, parameters(out)))
            table(name, ref, variants, generate)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
