#!/usr/bin/env python3
"""Computes reference embeddings for tests/fixtures/sentences.jsonl with
sentence-transformers (PyTorch, CPU, f32) from models/all-MiniLM-L6-v2, and
writes tests/fixtures/minilm-reference.jsonl. Run once; the output is
committed. Needs a venv with sentence-transformers from PyPI:

    python3 -m venv .venv-st && .venv-st/bin/pip install sentence-transformers
    .venv-st/bin/python scripts/reference-embeddings.py
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from sentence_transformers import SentenceTransformer  # noqa: E402

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
model = SentenceTransformer(os.path.join(root, "models", "all-MiniLM-L6-v2"), device="cpu")
rows = [json.loads(l) for l in open(os.path.join(root, "tests", "fixtures", "sentences.jsonl"), encoding="utf-8")]
vectors = model.encode([r["text"] for r in rows], batch_size=32, convert_to_numpy=True)
out = os.path.join(root, "tests", "fixtures", "minilm-reference.jsonl")
with open(out, "w") as f:
    for r, v in zip(rows, vectors):
        f.write(json.dumps({"id": r["id"], "embedding": [float(x) for x in v]}) + "\n")
print(f"{len(rows)} reference embeddings, dim {vectors.shape[1]}, max_seq_length {model.max_seq_length} -> {out}", file=sys.stderr)
