#!/usr/bin/env python3
"""Regenerates crates/optimize/corpus/default.txt, modelship's built-in
evaluation text: the opening of the 1911 Encyclopaedia Britannica article on
Shakespeare (public domain), from the `shakespeare` package that
scripts/fetch-models.sh unpacks, with scan markers removed and wrapped lines
joined into paragraphs.

    python3 scripts/make-corpus.py [$MODELSHIP_CACHE/data/shakespeare]
"""
import os
import re
import sys

BYTES = 16_000

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
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
with open(out, "w", encoding="utf-8") as f:
    f.write("\n\n".join(text) + "\n")
print(f"{out}: {size} bytes, {len(text)} paragraphs")
