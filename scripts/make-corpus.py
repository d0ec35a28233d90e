#!/usr/bin/env python3
"""Regenerates crates/optimize/corpus/default.txt, modelship's built-in
evaluation text: the opening of the 1911 Encyclopaedia Britannica article on
Shakespeare (public domain), from the `shakespeare` package that
scripts/fetch-models.sh unpacks, with scan markers removed and wrapped lines
joined into paragraphs.

    python3 scripts/make-corpus.py [--check] [$MODELSHIP_CACHE/data/shakespeare]

--check compares instead of writing and fails when the committed file is stale
(scripts/test.sh runs it).
"""
import os
import re
import sys

BYTES = 16_000

args = [a for a in sys.argv[1:] if a != "--check"]
check = "--check" in sys.argv[1:]
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

text, size = [], 0
for p in paragraphs:
    p = re.sub(r"\s+", " ", p.replace("--", "-"))
    text.append(p)
    size += len(p) + 2
    if size >= BYTES:
        break
out = os.path.join(os.path.dirname(__file__), "..", "crates", "optimize", "corpus", "default.txt")
corpus = "\n\n".join(text) + "\n"
if check:
    if open(out, encoding="utf-8").read() != corpus:
        sys.exit(f"{out} is stale: run scripts/make-corpus.py")
    sys.exit(0)
with open(out, "w", encoding="utf-8") as f:
    f.write(corpus)
print(f"{out}: {size} bytes, {len(text)} paragraphs")
