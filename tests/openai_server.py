"""An OpenAI-compatible embeddings server for tests/openai_http.rs: a
separate process on 127.0.0.1 that shares no code with stook.

It serves a sentence-transformers BERT folder (all-MiniLM-L6-v2) with the
model written out in numpy (weights from `safetensors`, tokens from
`tokenizers`, both from PyPI; no torch): `GET /v1/models`, `POST
/v1/embeddings` (a string or a list of strings, float or base64) and `POST
/v1/chat/completions` (a canned reply that echoes the last message, so
that forwarding of bodies stook does not read can be checked).

usage: openai_server.py MODEL_DIR PORT [--busy-every N] [--log FILE] [--key KEY]

--busy-every N answers every Nth POST with 429 and `Retry-After: 0.2`
before serving it, as a rate-limited server does. --log appends one line
per embeddings request served (its text count), for counting. --key
answers 401 to a request without `Authorization: Bearer KEY`.
"""

import argparse
import base64
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer


class MiniLM:
    """BertModel + mean pooling + L2 normalisation, as sentence-transformers
    runs all-MiniLM-L6-v2."""

    def __init__(self, folder):
        self.w = load_file(os.path.join(folder, "model.safetensors"))
        cfg = json.load(open(os.path.join(folder, "config.json")))
        self.heads = cfg["num_attention_heads"]
        self.layers = cfg["num_hidden_layers"]
        self.eps = cfg["layer_norm_eps"]
        self.max_len = json.load(open(os.path.join(folder, "sentence_bert_config.json")))[
            "max_seq_length"
        ]
        self.tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(self.max_len)

    def norm(self, x, name):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + self.eps) * self.w[name + ".weight"] + self.w[name + ".bias"]

    def dense(self, x, name):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    @staticmethod
    def gelu(x):
        # Exact GELU; erf by Abramowitz and Stegun 7.1.26 (error < 1.5e-7).
        z = np.abs(x) / np.sqrt(2.0)
        t = 1.0 / (1.0 + 0.3275911 * z)
        poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
        erf = np.sign(x) * (1.0 - poly * np.exp(-z * z))
        return 0.5 * x * (1.0 + erf)

    def embed(self, text):
        ids = self.tok.encode(text).ids
        n, w = len(ids), self.w
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        ).astype(np.float32)
        x = self.norm(x, "embeddings.LayerNorm")
        d = x.shape[1] // self.heads
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            q, k, v = (
                self.dense(x, p + "attention.self." + m).reshape(n, self.heads, d).transpose(1, 0, 2)
                for m in ("query", "key", "value")
            )
            scores = q @ k.transpose(0, 2, 1) / np.sqrt(d)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            att = scores / scores.sum(-1, keepdims=True)
            ctx = (att @ v).transpose(1, 0, 2).reshape(n, -1)
            x = self.norm(x + self.dense(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            h = self.gelu(self.dense(x, p + "intermediate.dense"))
            x = self.norm(x + self.dense(h, p + "output.dense"), p + "output.LayerNorm")
        v = x.mean(0).astype(np.float64)
        return (v / np.linalg.norm(v)).astype(np.float32), n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("port", type=int)
    ap.add_argument("--busy-every", type=int, default=0)
    ap.add_argument("--log")
    ap.add_argument("--key")
    args = ap.parse_args()
    model = MiniLM(args.model)
    name = os.path.basename(os.path.normpath(args.model))
    lock = threading.Lock()
    posts = [0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def reply(self, status, body, headers=()):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def error(self, status, message, param=None):
            self.reply(status, {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}})

        def refused(self):
            if args.key and self.headers.get("Authorization") != f"Bearer {args.key}":
                self.reply(401, {"error": {"message": "invalid api key", "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}})
                return True
            return False

        def do_GET(self):
            if self.refused():
                return
            if self.path == "/v1/models":
                self.reply(200, {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "tests"}]})
            else:
                self.error(404, f"no route {self.path}")

        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.refused():
                return
            with lock:
                posts[0] += 1
                busy = args.busy_every and posts[0] % args.busy_every == 0
            if busy:
                return self.reply(429, {"error": {"message": "rate limited", "type": "requests", "param": None, "code": "rate_limit_exceeded"}}, [("Retry-After", "0.2")])
            try:
                req = json.loads(raw)
            except ValueError:
                return self.error(400, "body is not JSON")
            if self.path == "/v1/chat/completions":
                last = req["messages"][-1]["content"]
                return self.reply(200, {
                    "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": req.get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": last[::-1]}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                })
            if self.path != "/v1/embeddings":
                return self.error(404, f"no route {self.path}")
            texts = req.get("input")
            texts = [texts] if isinstance(texts, str) else texts
            if not texts or not all(isinstance(t, str) and t for t in texts):
                return self.error(400, "input must be a non-empty string or list of them", "input")
            data, tokens = [], 0
            for i, t in enumerate(texts):
                v, n = model.embed(t)
                tokens += n
                e = base64.b64encode(v.astype("<f4").tobytes()).decode() if req.get("encoding_format") == "base64" else [float(x) for x in v]
                data.append({"object": "embedding", "index": i, "embedding": e})
            if args.log:
                with lock, open(args.log, "a") as f:
                    f.write(f"{len(texts)}\n")
            self.reply(200, {"object": "list", "data": data, "model": req.get("model"), "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):
            # A client closing its idle keep-alive connection is not news.
            if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", args.port), Handler)
    print(f"serving {name} on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
