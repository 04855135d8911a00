"""pyarrow's side of tests/formats.rs (run with .venv-arrow's python, made
by scripts/pyarrow-env.sh).

  formats.py write DIR ROWS     the same table in every input format stook
                                reads: in.jsonl, in.jsonl.gz, in.jsonl.zst,
                                in.parquet (several row groups), in.arrow
                                (several record batches), parts/ (a
                                directory of Parquet files); nulls, empty
                                strings, non-ASCII text, one text of ~1 MB
  formats.py dump OUT FORMAT    each result of stook's output directory OUT
                                (parts in FORMAT), one per line, in order
  formats.py bad DIR            inputs with bad values, for validate
  formats.py mixed DIR          mixed.parquet: nulls, non-ASCII, empty and
                                200 KB texts, int, float, bool, list and
                                timestamp columns
  formats.py same IN OUT FMT    OUT's parts (in FMT) read back equal IN,
                                column by column, types included
  formats.py passthrough OUT F  checks the score column copied into OUT
  formats.py embeddings A B C   compares embedding outputs in jsonl (A),
                                parquet (B) and arrow (C): schema and every
                                float, bit for bit
"""

import gzip
import json
import os
import struct
import sys

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.ipc as ipc
import pyarrow.parquet as pq


def rows(n):
    out = []
    for i in range(n):
        if i % 101 == 3:
            text = None
        elif i % 13 == 0:
            text = ""
        else:
            text = "row %d %s é ✓ 中文 😀 \"q\" \\ end" % (i, "w " * (i % 23))
        out.append({"id": i, "text": text, "score": i / 4, "tags": ["a", "b"] if i % 2 else []})
    out[n // 2]["text"] = "long " * 200_000
    return out


def line(r):
    # As Arrow's JSON writer writes a row: keys in column order, nulls left out.
    return json.dumps({k: v for k, v in r.items() if v is not None}, ensure_ascii=False, separators=(",", ":"))


def write(d, n):
    os.makedirs(d, exist_ok=True)
    rs = rows(n)
    text = "".join(line(r) + "\n" for r in rs).encode()
    with open(os.path.join(d, "in.jsonl"), "wb") as f:
        f.write(text)
    with gzip.open(os.path.join(d, "in.jsonl.gz"), "wb") as f:
        f.write(text)
    with pa.CompressedOutputStream(os.path.join(d, "in.jsonl.zst"), "zstd") as f:
        f.write(text)
    t = pa.Table.from_pylist(rs)
    pq.write_table(t, os.path.join(d, "in.parquet"), row_group_size=7_000)
    feather.write_feather(t, os.path.join(d, "in.arrow"), compression="uncompressed", chunksize=9_000)
    parts = os.path.join(d, "parts")
    os.makedirs(parts, exist_ok=True)
    third = n // 3
    for k, (a, b) in enumerate([(0, third), (third, 2 * third), (2 * third, n)]):
        pq.write_table(t.slice(a, b - a), os.path.join(parts, "p-%d.parquet" % k), row_group_size=10_000)


def part_files(out, fmt):
    return sorted(os.path.join(out, p) for p in os.listdir(out) if p.startswith("part-") and p.endswith("." + fmt))


def read_part(p, fmt):
    if fmt == "parquet":
        return pq.read_table(p)
    with pa.memory_map(p) as src:
        return ipc.open_file(src).read_all()


def dump(out, fmt):
    w = sys.stdout
    for p in part_files(out, fmt):
        if fmt == "jsonl":
            with open(p, encoding="utf-8") as f:
                w.write(f.read())
            continue
        t = read_part(p, fmt)
        if t.schema.names == ["result"]:
            # A backend's JSON results (echo over JSON Lines).
            assert t.schema.field("result").type == pa.string(), t.schema
            for s in t.column("result").to_pylist():
                w.write(s + "\n")
        else:
            # A table's rows, typed (echo over Parquet or Arrow).
            for r in t.to_pylist():
                w.write(line(r) + "\n")


def bad(d):
    os.makedirs(d, exist_ok=True)
    pq.write_table(pa.table({"text": pa.array([1, 2, 3], pa.int64())}), os.path.join(d, "int.parquet"))
    texts = ["t%d" % i for i in range(10)]
    texts[7] = None
    pq.write_table(pa.table({"text": texts}), os.path.join(d, "null.parquet"), row_group_size=4)
    feather.write_feather(pa.table({"text": texts}), os.path.join(d, "null.arrow"), compression="uncompressed")
    with ipc.new_stream(os.path.join(d, "stream.arrow"), pa.schema([("text", pa.string())])) as w:
        w.write_table(pa.table({"text": ["a"]}))
    pq.write_table(pa.table({"body": ["a"]}), os.path.join(d, "nocol.parquet"))
    whole = gzip.compress("".join('{"text":"row %d"}\n' % i for i in range(50_000)).encode())
    with open(os.path.join(d, "trunc.jsonl.gz"), "wb") as f:
        f.write(whole[: len(whole) // 2])
    with open(os.path.join(d, "plain.jsonl.gz"), "wb") as f:
        f.write(b'{"text":"a"}\n')


def mixed(d):
    os.makedirs(d, exist_ok=True)
    n = 3000
    text = []
    for i in range(n):
        if i % 7 == 0:
            text.append(None)
        elif i % 11 == 0:
            text.append("")
        elif i % 500 == 1:
            text.append("é✓中😀 " * 20_000)  # about 200 KB
        else:
            text.append("row %d é ✓ 中文 😀 \"q\" \\ \t end" % i)
    t = pa.table({
        "id": pa.array(range(n), pa.int64()),
        "text": pa.array(text, pa.string()),
        "n32": pa.array([None if i % 5 == 0 else i * 3 for i in range(n)], pa.int32()),
        "score": pa.array([i / 3 for i in range(n)], pa.float64()),
        "ok": pa.array([i % 3 == 0 for i in range(n)], pa.bool_()),
        "tags": pa.array([["x"] * (i % 3) for i in range(n)], pa.list_(pa.string())),
        "at": pa.array([i * 1_000_000 for i in range(n)], pa.timestamp("us")),
    })
    pq.write_table(t, os.path.join(d, "mixed.parquet"), row_group_size=700)
    feather.write_feather(t, os.path.join(d, "mixed.arrow"), compression="uncompressed", chunksize=900)


def same(inp, out, fmt):
    want = pq.read_table(inp) if inp.endswith(".parquet") else read_part(inp, "arrow")
    got = pa.concat_tables([read_part(p, fmt) for p in part_files(out, fmt)])
    assert got.schema.names == want.schema.names, (got.schema, want.schema)
    for name in want.schema.names:
        a, b = want.column(name), got.column(name)
        assert a.type == b.type, (name, a.type, b.type)
        assert a.combine_chunks().equals(b.combine_chunks()), name
    print(got.num_rows)


def vectors(t):
    return [struct.pack("%df" % len(v), *v) for v in t.column("embedding").to_pylist()]


def embeddings(a, b, c):
    jl = []
    for p in part_files(a, "jsonl"):
        with open(p, encoding="utf-8") as f:
            jl += [json.loads(l) for l in f]
    want = [struct.pack("%df" % len(r["embedding"]), *r["embedding"]) for r in jl]
    ids = [str(r["id"]) if "id" in r else None for r in jl]
    for out, fmt in [(b, "parquet"), (c, "arrow")]:
        t = pa.concat_tables(read_part(p, fmt) for p in part_files(out, fmt))
        e = t.schema.field("embedding").type
        assert pa.types.is_fixed_size_list(e) and e.list_size == 384 and e.value_type == pa.float32(), t.schema
        assert t.schema.field("id").type == pa.string(), t.schema
        assert vectors(t) == want, fmt + ": vectors differ from the JSON Lines output"
        assert t.column("id").to_pylist() == ids, fmt + ": ids differ"
    print("embeddings agree: %d rows, fixed_size_list<float>[384] in parquet and arrow" % len(want))


def passthrough(out, fmt):
    if fmt == "jsonl":
        rs = [json.loads(l) for p in part_files(out, fmt) for l in open(p, encoding="utf-8")]
        assert all(list(r)[:2] == ["score", "id"] for r in rs), list(rs[0])
        got = [r["score"] for r in rs]
    else:
        t = pa.concat_tables(read_part(p, fmt) for p in part_files(out, fmt))
        assert t.schema.names[:2] == ["score", "id"], t.schema
        assert t.schema.field("score").type == pa.float64(), t.schema
        got = t.column("score").to_pylist()
    assert got == [i / 2 for i in range(300)], got[:5]


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "write":
        write(sys.argv[2], int(sys.argv[3]))
    elif cmd == "dump":
        dump(sys.argv[2], sys.argv[3])
    elif cmd == "bad":
        bad(sys.argv[2])
    elif cmd == "passthrough":
        passthrough(sys.argv[2], sys.argv[3])
    elif cmd == "embeddings":
        embeddings(*sys.argv[2:5])
    elif cmd == "mixed":
        mixed(sys.argv[2])
    elif cmd == "same":
        same(*sys.argv[2:5])
    else:
        sys.exit("unknown command " + cmd)
