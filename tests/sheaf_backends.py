"""A user-defined sheaf-serve backend, registered through sheaf-serve's own
`register_backend`: all-MiniLM-L6-v2 embeddings from the local model folder
(MiniLM in numpy, tests/openai_server.py; nothing from a hub, no torch).

Used by tests/python.rs through stook's `sheaf` backend and by
scripts/record-sheaf-fixture.sh through sheaf-serve's BatchRunner."""

import os
import sys

import numpy as np
from sheaf.api.embedding import EmbeddingRequest, EmbeddingResponse
from sheaf.backends.base import ModelBackend
from sheaf.registry import register_backend

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@register_backend("minilm-numpy")
class MiniLMBackend(ModelBackend):
    def __init__(self, model_dir, crash_on=None):
        self.model_dir = model_dir
        self.crash_on = crash_on
        self.model = None

    @property
    def model_type(self):
        return "embedding"

    def load(self):
        from openai_server import MiniLM

        self.model = MiniLM(self.model_dir)

    def predict(self, request: EmbeddingRequest) -> EmbeddingResponse:
        vectors = []
        for text in request.texts:
            if self.crash_on and self.crash_on in text:
                raise RuntimeError(f"cannot embed {text!r}")
            # all-MiniLM-L6-v2's vectors are normalised whatever `normalize` says.
            v, _ = self.model.embed(text)
            vectors.append(v)
        matrix = np.stack(vectors) if vectors else np.zeros((0, 384), np.float32)
        return EmbeddingResponse(
            request_id=request.request_id,
            model_name=request.model_name,
            embeddings=matrix.tolist(),
            dim=int(matrix.shape[1]),
        )
