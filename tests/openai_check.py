"""Checks stook's OpenAI Batch output with the official `openai` package's
types (tests/openai.rs runs it with .venv-arrow's python).

usage: openai_check.py REQUESTS OUTPUT REFERENCE [--forwarded] [--same-as OTHER]

REQUESTS is the input file. A request's custom_id says what to expect:
"s-3-4" embeds sentences 3 and 4 of REFERENCE (sentence-transformers'
vectors, one {"id", "embedding"} a line); "x-..." lines carry an "expect"
object ({"status": 400, "param": ..., "says": ...}, or {"tokens": N}).
Lines that are not requests (no string custom_id) must be answered with an
error object naming their line. With --forwarded (the openai-http
backend), chat lines must hold the test server's ChatCompletion and the
server, not stook, decides on the "x-" lines stook itself forwards; with
--same-as, every vector must agree (cosine >= 0.9999) with OTHER's for the
same custom_id. Prints one JSON summary line.
"""

import base64
import json
import math
import re
import struct
import sys

from openai.types import BatchError, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

requests_path, output_path, reference_path = sys.argv[1:4]
options = sys.argv[4:]
forwarded = "--forwarded" in options
other_path = options[options.index("--same-as") + 1] if "--same-as" in options else None

reference = {}
for line in open(reference_path, encoding="utf-8"):
    d = json.loads(line)
    reference[d["id"]] = d["embedding"]

requests = []
with open(requests_path, "rb") as f:
    for n, raw in enumerate(f, 1):
        if not raw.strip():
            continue
        try:
            requests.append((n, json.loads(raw)))
        except ValueError:
            requests.append((n, None))

outputs = [json.loads(line) for line in open(output_path, encoding="utf-8")]
assert len(outputs) == len(requests), (len(outputs), len(requests))

ID = re.compile(r"batch_req_[0-9a-f]{32}\Z")
REQUEST_ID = re.compile(r"req_[0-9a-f]{32}\Z")


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def vectors_of(body):
    """The float vectors of an embeddings body, base64 decoded."""
    out = []
    for item in body["data"]:
        e = item["embedding"]
        if isinstance(e, str):
            packed = base64.b64decode(e, validate=True)
            e = list(struct.unpack(f"<{len(packed) // 4}f", packed))
        out.append(e)
    return out


others = {}
if other_path:
    for line in open(other_path, encoding="utf-8"):
        o = json.loads(line)
        r = o["response"]
        if o["custom_id"] and r and r["status_code"] == 200 and "data" in r["body"]:
            others[o["custom_id"]] = vectors_of(r["body"])

seen = set()
counts = {"ok": 0, "refused": 0, "unreadable": 0, "base64": 0, "texts": 0, "chat": 0, "error_lines": 0, "compared": 0}
lowest_agreement = 1.0
worst = 1.0
by_text = {}
for (n, req), out in zip(requests, outputs):
    where = f"line {n}"
    assert list(out) == ["id", "custom_id", "response", "error"], (where, list(out))
    assert ID.match(out["id"]) and out["id"] not in seen, (where, out["id"])
    seen.add(out["id"])
    custom_id = req.get("custom_id") if isinstance(req, dict) else None
    failed = out["error"] is not None or out["response"]["status_code"] != 200
    counts["error_lines"] += failed
    if not isinstance(custom_id, str):
        assert out["custom_id"] is None and out["response"] is None, where
        assert set(out["error"]) == {"code", "message", "line"}, (where, out["error"])
        error = BatchError.model_validate(out["error"])
        assert error.code == "invalid_json_line" and error.line == n, (where, error)
        assert error.message.startswith(f"line {n}"), (where, error.message)
        counts["unreadable"] += 1
        continue
    assert out["custom_id"] == custom_id and out["error"] is None, where
    response = out["response"]
    assert list(response) == ["status_code", "request_id", "body"], (where, response)
    assert REQUEST_ID.match(response["request_id"]), where
    expect = req.get("expect", {})
    url, method = req.get("url"), req.get("method")
    if forwarded and method == "POST" and url == "/v1/chat/completions":
        assert response["status_code"] == 200, (where, response)
        chat = ChatCompletion.model_validate(response["body"])
        said = req["body"]["messages"][-1]["content"]
        assert chat.choices[0].message.content == said[::-1], (where, chat)
        counts["chat"] += 1
        continue
    if forwarded and "status" in expect and method == "POST" and url == "/v1/embeddings":
        # Forwarded as it is: the server decides; its answer is kept whole.
        assert response["status_code"] in (200, 400), (where, response)
        counts["refused"] += response["status_code"] == 400
        continue
    if "status" in expect:
        assert response["status_code"] == expect["status"], (where, response)
        error = response["body"]["error"]
        assert list(response["body"]) == ["error"], where
        assert list(error) == ["message", "type", "param", "code"], (where, error)
        assert error["type"] == "invalid_request_error", (where, error)
        assert error["param"] == expect["param"] and error["code"] is None, (where, error)
        assert expect["says"] in error["message"], (where, error["message"])
        counts["refused"] += 1
        continue
    assert response["status_code"] == 200, (where, response)
    body = response["body"]
    assert list(body) == ["object", "data", "model", "usage"], (where, list(body))
    wanted = req["body"].get("encoding_format") or "float"
    texts = req["body"]["input"]
    texts = [texts] if isinstance(texts, str) else texts
    for k, item in enumerate(body["data"]):
        assert list(item) == ["object", "index", "embedding"], (where, list(item))
        if wanted == "base64":
            assert isinstance(item["embedding"], str), where
            packed = base64.b64decode(item["embedding"], validate=True)
            item["embedding"] = list(struct.unpack(f"<{len(packed) // 4}f", packed))
            counts["base64"] += 1
        else:
            assert isinstance(item["embedding"], list), where
    parsed = CreateEmbeddingResponse.model_validate(body)
    assert parsed.object == "list" and parsed.model == req["body"]["model"], where
    assert [d.index for d in parsed.data] == list(range(len(texts))), where
    assert all(d.object == "embedding" and len(d.embedding) == 384 for d in parsed.data), where
    usage = parsed.usage
    assert usage.total_tokens == usage.prompt_tokens >= 2 * len(texts), (where, usage)
    if "tokens" in expect:
        assert usage.prompt_tokens == expect["tokens"], (where, usage, expect)
    for text, d in zip(texts, parsed.data):
        # The same text, float or base64, in any request: the same vector.
        if text in by_text:
            diff = max(abs(a - b) for a, b in zip(by_text[text], d.embedding))
            assert diff <= 1e-6, (where, "differs from an earlier request's vector by", diff)
        by_text[text] = d.embedding
    if custom_id in others:
        for mine, theirs in zip((d.embedding for d in parsed.data), others[custom_id]):
            lowest_agreement = min(lowest_agreement, cosine(mine, theirs))
            counts["compared"] += 1
    if custom_id.startswith("s-"):
        sentences = [int(s) for s in custom_id.split("-")[1:]]
        assert len(sentences) == len(texts), where
        for s, d in zip(sentences, parsed.data):
            worst = min(worst, cosine(d.embedding, reference[s]))
    counts["ok"] += 1
    counts["texts"] += len(texts)

print(json.dumps({**counts, "lines": len(outputs), "lowest_cosine": worst, "lowest_agreement": lowest_agreement}))
