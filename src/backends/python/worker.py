# stook's Python worker. stook starts it as `python -u -c <this text>` and
# talks to it over the socket on file descriptor 3: frames of a 4-byte
# little-endian length and a JSON object. The store's shared memory (a
# memfd) arrives once over that socket (SCM_RIGHTS); batches are read from
# it in place and results are written into room stook reserves in it, so
# only offsets, lengths and errors cross the socket.
#
#   describe  -> {"schema": <Arrow IPC stream, base64> | null}
#   load      -> {"pid": ...}               (the class built once, kwargs)
#   store     -> {}                         (fd attached: map it)
#   batch     -> {"room": n} | {"error": ...}
#   write     -> {"written": n}             (into the room at "offset")
#   abort     -> {}                         (no room: drop the result)
#
# Anything the user's code prints goes to stdout/stderr, which stook logs.

import base64
import importlib
import importlib.util
import json
import mmap
import os
import socket
import struct
import sys
import traceback

CONTROL_FD = 3
ROW, RAW = "_row", "_raw"


def fail(message):
    """An error message with the last frames of the current traceback."""
    lines = traceback.format_exc().rstrip().splitlines()
    return {"error": message, "traceback": "\n".join(lines[-12:])}


class Channel:
    def __init__(self, fd):
        self.sock = socket.socket(fileno=fd)
        self.fds = []

    def recv(self):
        head = b""
        while len(head) < 4:
            data, fds, _, _ = socket.recv_fds(self.sock, 4 - len(head), 4)
            self.fds.extend(fds)
            if not data:
                return None
            head += data
        (n,) = struct.unpack("<I", head)
        body = bytearray()
        while len(body) < n:
            data = self.sock.recv(n - len(body))
            if not data:
                return None
            body += data
        return json.loads(body)

    def send(self, msg):
        data = json.dumps(msg).encode()
        self.sock.sendall(struct.pack("<I", len(data)) + data)


def load_class(module, name):
    if module.endswith(".py") or os.sep in module:
        path = os.path.abspath(module)
        # Its own folder first, so that it imports its neighbours.
        sys.path.insert(0, os.path.dirname(path))
        stem = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(stem, path)
        if spec is None:
            raise ImportError(f"cannot load {path} as a module")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[stem] = mod
        spec.loader.exec_module(mod)
    else:
        sys.path.insert(0, os.getcwd())
        mod = importlib.import_module(module)
    try:
        return getattr(mod, name)
    except AttributeError:
        raise AttributeError(f"module {module!r} has no class {name!r}") from None


def schema_bytes(pa, schema):
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema):
        pass
    return base64.b64encode(sink.getvalue().to_pybytes()).decode()


def declared_schema(pa, cls):
    schema = getattr(cls, "output_schema", None)
    if schema is None:
        return None
    if callable(schema) and not isinstance(schema, pa.Schema):
        schema = schema()
    if not isinstance(schema, pa.Schema):
        raise TypeError(
            f"output_schema must be a pyarrow.Schema, not {type(schema).__name__}"
        )
    return schema


class Worker:
    def __init__(self, channel):
        self.channel = channel
        self.model = None
        self.schema = None
        self.format = "pyarrow"
        self.mm = None
        self.view = None
        self.result = None
        import pyarrow

        self.pa = pyarrow

    def describe(self, msg):
        cls = load_class(msg["module"], msg["class"])
        schema = declared_schema(self.pa, cls)
        return {"schema": schema_bytes(self.pa, schema) if schema is not None else None}

    def load(self, msg):
        cls = load_class(msg["module"], msg["class"])
        self.schema = declared_schema(self.pa, cls)
        self.format = msg["batch_format"]
        self.model = cls(**msg["kwargs"])
        if not callable(self.model):
            raise TypeError(f"{msg['class']} instances are not callable: define __call__(self, batch)")
        schema = schema_bytes(self.pa, self.schema) if self.schema is not None else None
        return {"pid": os.getpid(), "schema": schema}

    def store(self, msg):
        if not self.channel.fds:
            raise RuntimeError("internal: the store's descriptor did not arrive")
        fd = self.channel.fds.pop()
        for extra in self.channel.fds:
            os.close(extra)
        self.channel.fds = []
        self.view = None
        if self.mm is not None:
            self.mm.close()
        self.mm = mmap.mmap(fd, msg["size"], mmap.MAP_SHARED)
        os.close(fd)
        self.view = self.pa.py_buffer(self.mm)
        return {}

    def rows(self, msg):
        """The batch's rows as a pyarrow Table, read in place."""
        pa = self.pa
        obj = self.view.slice(msg["offset"], msg["length"])
        batch = pa.ipc.open_stream(obj).read_next_batch()
        batch = batch.slice(msg["start"], msg["rows"])
        raw = batch.column(RAW)
        if pa.types.is_struct(raw.type):
            # A table's rows: their own typed columns.
            return pa.Table.from_batches([pa.RecordBatch.from_struct_array(raw)])
        # JSON Lines rows: one JSON text each, parsed in one go.
        import pyarrow.compute as pc
        import pyarrow.json as pj

        lines = pc.binary_join_element_wise(raw, "", "\n")
        size = pc.sum(pc.binary_length(lines)).as_py() or 0
        data = lines.buffers()[2].slice(0, size)
        options = pj.ReadOptions(use_threads=False, block_size=max(size + 1, 1 << 16))
        return pj.read_json(pa.BufferReader(data), read_options=options)

    def formatted(self, table):
        if self.format == "pyarrow":
            return table
        if self.format == "numpy":
            return {name: table.column(name).to_numpy() for name in table.column_names}
        return table.to_pandas()

    def as_table(self, result):
        pa = self.pa
        if isinstance(result, pa.Table):
            return result
        if isinstance(result, pa.RecordBatch):
            return pa.Table.from_batches([result])
        if isinstance(result, dict):
            return pa.table({k: self.column(v) for k, v in result.items()})
        if type(result).__module__.startswith("pandas") and hasattr(result, "columns"):
            return pa.Table.from_pandas(result, preserve_index=False)
        raise TypeError(
            "the model returned a "
            + type(result).__name__
            + ": expected a pyarrow Table or RecordBatch, a dict of columns or a pandas DataFrame"
        )

    def column(self, values):
        pa = self.pa
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            return values
        shape = getattr(values, "shape", None)
        if shape is not None and len(shape) == 2:
            # A matrix: one fixed-size list (a vector) per row.
            flat = pa.array(values.reshape(-1))
            return pa.FixedSizeListArray.from_arrays(flat, shape[1])
        return pa.array(values)

    def batch(self, msg):
        pa = self.pa
        table = self.rows(msg)
        result = self.as_table(self.model(self.formatted(table)))
        if result.num_rows != msg["rows"]:
            raise ValueError(
                f"the model returned {result.num_rows} rows for a batch of {msg['rows']}"
            )
        if self.schema is not None:
            missing = [n for n in self.schema.names if n not in result.column_names]
            if missing:
                raise ValueError(
                    f"the result has no column {missing[0]!r} (output_schema names "
                    + ", ".join(self.schema.names)
                    + "; the result has "
                    + ", ".join(result.column_names)
                    + ")"
                )
            result = result.select(self.schema.names).cast(self.schema)
        else:
            texts = [
                json.dumps(r, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
                for r in result.to_pylist()
            ]
            result = pa.table({"result": pa.array(texts, pa.string())})
        batch = result.combine_chunks().to_batches()
        batch = batch[0] if batch else pa.RecordBatch.from_pylist([], schema=result.schema)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as w:
            w.write_batch(batch)
        self.result = sink.getvalue()
        return {"room": self.result.size}

    def write(self, msg):
        data, self.result = self.result, None
        at = msg["offset"]
        self.mm[at : at + data.size] = data
        return {"written": data.size}

    def abort(self, _msg):
        self.result = None
        return {}


def main():
    channel = Channel(CONTROL_FD)
    worker = Worker(channel)
    ops = {
        "describe": worker.describe,
        "load": worker.load,
        "store": worker.store,
        "batch": worker.batch,
        "write": worker.write,
        "abort": worker.abort,
    }
    while True:
        msg = channel.recv()
        if msg is None:
            return
        op = msg.get("op")
        try:
            reply = ops[op](msg)
        except Exception as e:  # the user's code: report it, keep serving
            reply = fail(f"{type(e).__name__}: {e}")
        channel.send(reply)


main()
