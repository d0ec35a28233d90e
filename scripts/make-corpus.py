#!/usr/bin/env python3
"""Regenerates crates/optimize/corpus/default.txt, modelship's built-in
evaluation text: the opening of the 1911 Encyclopaedia Britannica article on
Shakespeare (public domain), from the `shakespeare` package that
scripts/fetch-models.sh unpacks, with scan markers removed and wrapped lines
joined into paragraphs.

    python3 scripts/make-corpus.py [--check | --held-out FILE] [$MODELSHIP_CACHE/data/shakespeare]

--check compares instead of writing and fails when the committed file is stale
(scripts/test.sh runs it). --held-out FILE writes the next 60,000 bytes of the
article instead, cleaned the same way: text no built-in evaluation has seen,
for measuring quality on more positions (scripts/bench/quantize.py).
"""
import os
import re
import sys

BYTES = 16_000
HELD_OUT_BYTES = 60_000

argv = sys.argv[1:]
held_out = None
if "--held-out" in argv:
    i = argv.index("--held-out")
    held_out = argv[i + 1]
    del argv[i:i + 2]
args = [a for a in argv if a != "--check"]
check = "--check" in argv
root = args[0] if args else os.path.join(
    os.environ.get("MODELSHIP_CACHE", os.path.expanduser("~/.cache/modelship")), "data", "shakespeare")
raw = open(os.path.join(root, "ancillary", "britannica-11th.txt"), encoding="utf-8").read()

paragraphs, current = [], []
for line in raw.splitlines():
    line = line.strip()
    if line.startswith("#") or re.fullmatch(r"p\.\d+:\d+", line):
        continue
    if not line:
        if current:
            paragraphs.append(" ".join(current))
            current = []
        continue
    current.append(line)
if current:
    paragraphs.append(" ".join(current))


def take(paragraphs, limit):
    """Paragraphs from the front until `limit` bytes: (taken, bytes)."""
    text, size = [], 0
    for p in paragraphs:
        text.append(re.sub(r"\s+", " ", p.replace("--", "-")))
        size += len(text[-1]) + 2
        if size >= limit:
            break
    return text, size


text, size = take(paragraphs, BYTES)
if held_out:
    more, size = take(paragraphs[len(text):], HELD_OUT_BYTES)
    with open(held_out, "w", encoding="utf-8") as f:
        f.write("\n\n".join(more) + "\n")
    print(f"{held_out}: {size} bytes, {len(more)} paragraphs")
    sys.exit(0)
out = os.path.join(os.path.dirname(__file__), "..", "crates", "optimize", "corpus", "default.txt")
corpus = "\n\n".join(text) + "\n"
if check:
    if open(out, encoding="utf-8").read() != corpus:
        sys.exit(f"{out} is stale: run scripts/make-corpus.py")
    sys.exit(0)
with open(out, "w", encoding="utf-8") as f:
    f.write(corpus)
print(f"{out}: {size} bytes, {len(text)} paragraphs")
