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
#   describe_sheaf, load_sheaf: the same for a sheaf-serve backend
#   batch     -> {"room": n} | {"invalid": [[i, why], ...]} | {"error": ...}
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


class Refused(Exception):
    """An error of the job's own making: said without a traceback."""


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


def import_module(module):
    """A module by name, or a .py file (its folder goes on sys.path first,
    so that it imports its neighbours)."""
    if module.endswith(".py") or os.sep in module:
        path = os.path.abspath(module)
        sys.path.insert(0, os.path.dirname(path))
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in sys.modules:
            return sys.modules[stem]
        spec = importlib.util.spec_from_file_location(stem, path)
        if spec is None:
            raise ImportError(f"cannot load {path} as a module")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[stem] = mod
        spec.loader.exec_module(mod)
        return mod
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return importlib.import_module(module)


def load_class(module, name):
    mod = import_module(module)
    try:
        return getattr(mod, name)
    except AttributeError:
        raise AttributeError(f"module {module!r} has no class {name!r}") from None


def request_id(input_key, row):
    """The id stook gives a request without one: as the embedding
    backend's sheaf schema derives it (a UUID-shaped digest of the input's
    content key and the 0-based row)."""
    import hashlib

    h = hashlib.sha256(b"stook request_id\0" + input_key.encode() + row.to_bytes(8, "little"))
    b = bytearray(h.digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x80
    b[8] = (b[8] & 0x3F) | 0x80
    x = b.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


class Sheaf:
    """A sheaf-serve backend, built through sheaf-serve's own registry."""

    def __init__(self, imports, spec, load):
        for module in imports:
            import_module(module)
        from sheaf.backends._register import (
            register_builtin_backends,
            register_extra_backends,
        )

        register_builtin_backends()
        register_extra_backends()
        from pydantic import TypeAdapter
        from sheaf.api.base import ModelType
        from sheaf.api.union import AnyRequest
        from sheaf.registry import _BACKEND_REGISTRY

        self.model_type = ModelType(spec["model_type"])
        cls = _BACKEND_REGISTRY.get(spec["backend"])
        if cls is None:
            raise Refused(
                f"unknown sheaf backend {spec['backend']!r}; registered: "
                + ", ".join(sorted(_BACKEND_REGISTRY))
                + " (a backend of your own is registered by a module in `imports`)"
            )
        self.adapter = TypeAdapter(AnyRequest)
        self.backend = None
        if load:
            from sheaf.model_opt import apply_model_opt

            backend = cls(**spec.get("backend_kwargs", {}))
            apply_model_opt(backend, None, spec["name"])
            backend.load()
            self.backend = backend

    def __call__(self, rows, numbers, input_key):
        from pydantic import ValidationError

        requests, invalid = [], []
        for i, (row, n) in enumerate(zip(rows, numbers)):
            if row.get("request_id") is None:
                row["request_id"] = request_id(input_key, n)
            try:
                req = self.adapter.validate_python(row)
            except ValidationError as e:
                # loc[0] is the union's tag (the model_type): left out.
                said = "; ".join(
                    f"{'.'.join(str(x) for x in err['loc'][1:]) or 'the request'}: {err['msg']}"
                    for err in e.errors()
                )
                invalid.append((i, said))
                continue
            if req.model_type != self.model_type:
                invalid.append((i, f"model_type {req.model_type.value!r} is not the spec's {self.model_type.value!r}"))
                continue
            requests.append(req)
        if invalid:
            return None, invalid
        responses = self.backend.batch_predict(requests)
        if len(responses) != len(requests):
            raise ValueError(f"batch_predict returned {len(responses)} responses for {len(requests)} requests")
        return [json.dumps(r.model_dump(mode="json")) for r in responses], []


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
        self.sheaf = None
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

    def describe_sheaf(self, msg):
        Sheaf(msg["imports"], msg["spec"], load=False)
        return {}

    def load_sheaf(self, msg):
        self.sheaf = Sheaf(msg["imports"], msg["spec"], load=True)
        return {"pid": os.getpid(), "schema": None}

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

    def batch_at(self, msg):
        """The batch's record batch, read in place from the store."""
        obj = self.view.slice(msg["offset"], msg["length"])
        batch = self.pa.ipc.open_stream(obj).read_next_batch()
        return batch.slice(msg["start"], msg["rows"])

    def rows(self, msg):
        """The batch's rows as a pyarrow Table, read in place."""
        pa = self.pa
        raw = self.batch_at(msg).column(RAW)
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
            return {name: self.ndarray(table.column(name)) for name in table.column_names}
        return table.to_pandas()

    def ndarray(self, column):
        """A column as numpy: a fixed-size list (a vector a row) becomes a
        2-D array, as Ray Data gives tensor columns."""
        pa = self.pa
        if pa.types.is_fixed_size_list(column.type) and column.null_count == 0:
            width = column.type.list_size
            flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
            return flat.reshape(len(column), width)
        return column.to_numpy()

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
        if self.sheaf is not None:
            return self.sheaf_batch(msg)
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
        return self.stage(result)

    def stage(self, result):
        """Serialises `result` and asks for room for it in the store."""
        pa = self.pa
        batch = result.combine_chunks().to_batches()
        batch = batch[0] if batch else pa.RecordBatch.from_pylist([], schema=result.schema)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as w:
            w.write_batch(batch)
        self.result = sink.getvalue()
        return {"room": self.result.size}

    def sheaf_batch(self, msg):
        pa = self.pa
        batch = self.batch_at(msg)
        raw = batch.column(RAW)
        if pa.types.is_struct(raw.type):
            rows = raw.to_pylist()
        else:
            rows = [json.loads(t) for t in raw.to_pylist()]
        numbers = batch.column(ROW).to_pylist()
        texts, invalid = self.sheaf(rows, numbers, msg["input_key"])
        if invalid:
            return {"invalid": invalid}
        return self.stage(pa.table({"result": pa.array(texts, pa.string())}))

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
        "describe_sheaf": worker.describe_sheaf,
        "load_sheaf": worker.load_sheaf,
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
        except Refused as e:
            reply = {"error": str(e)}
        except Exception as e:  # the user's code: report it, keep serving
            reply = fail(f"{type(e).__name__}: {e}")
        channel.send(reply)


main()
