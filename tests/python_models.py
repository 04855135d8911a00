"""Models for tests/python.rs: the same results through each batch format,
and a model that fails in every way a Python model can."""

import ctypes
import os
import time

import pyarrow as pa
import pyarrow.compute as pc

SCHEMA = pa.schema([("id", pa.int64()), ("chars", pa.int32()), ("shout", pa.string())])


def note_pid(marks):
    """Records this worker's pid, so that the test can check it is gone."""
    if marks:
        os.makedirs(os.path.join(marks, "pids"), exist_ok=True)
        open(os.path.join(marks, "pids", str(os.getpid())), "w").close()


class Arrow:
    output_schema = SCHEMA

    def __init__(self, marks=""):
        note_pid(marks)

    def __call__(self, batch):
        assert isinstance(batch, pa.Table), type(batch)
        return {
            "id": batch["id"],
            "chars": pc.utf8_length(batch["text"]),
            "shout": pc.utf8_upper(batch["text"]),
        }


class Numpy:
    output_schema = SCHEMA

    def __init__(self, marks=""):
        import numpy as np

        self.np = np
        note_pid(marks)

    def __call__(self, batch):
        np = self.np
        assert isinstance(batch, dict) and isinstance(batch["text"], np.ndarray), type(batch)
        return {
            "id": batch["id"],
            "chars": np.array([len(t) for t in batch["text"]], dtype=np.int32),
            "shout": np.array([t.upper() for t in batch["text"]], dtype=object),
        }


class Pandas:
    output_schema = SCHEMA

    def __init__(self, marks=""):
        note_pid(marks)

    def __call__(self, df):
        import pandas as pd

        assert isinstance(df, pd.DataFrame), type(df)
        out = pd.DataFrame({"id": df["id"]})
        out["chars"] = df["text"].str.len()
        out["shout"] = df["text"].str.upper()
        return out


class Untyped:
    """No output_schema: each result row is written as a JSON object."""

    def __call__(self, batch):
        return {"id": batch["id"], "words": pc.count_substring(batch["text"], " ")}


class Vectors:
    """A result ten times its input: one float32 vector per row."""

    output_schema = pa.schema([("vector", pa.list_(pa.float32(), 256))])

    def __call__(self, batch):
        import numpy as np

        n = batch.num_rows
        return {"vector": np.ones((n, 256), dtype=np.float32)}


class Faulty:
    """Arrow's results, but a row whose text holds a trigger word:

    RAISE  raises, every time;
    KILL   SIGKILLs the worker, once (a marker file remembers);
    CRASH  crashes the interpreter (SIGSEGV), every time;
    HANG   sleeps for an hour, once.
    """

    output_schema = SCHEMA

    def __init__(self, marks):
        self.marks = marks
        note_pid(marks)

    def once(self, name):
        path = os.path.join(self.marks, name)
        if os.path.exists(path):
            return False
        open(path, "w").close()
        return True

    def __call__(self, batch):
        texts = batch["text"].to_pylist()
        for t in texts:
            if "RAISE" in t:
                raise ValueError(f"cannot score {t!r}")
            if "KILL" in t and self.once("killed"):
                os.kill(os.getpid(), 9)
            if "CRASH" in t:
                ctypes.string_at(0)
            if "HANG" in t and self.once("hung"):
                time.sleep(3600)
        return Arrow()(batch)


class Slow(Arrow):
    """Arrow's results, a tenth of a second a batch."""

    def __call__(self, batch):
        time.sleep(0.1)
        return super().__call__(batch)


class VectorSums:
    """A numpy model over vectors: each row's fixed-size list arrives as a
    row of a 2-D array."""

    output_schema = pa.schema([("total", pa.float64()), ("width", pa.int32())])

    def __call__(self, batch):
        import numpy as np

        v = batch["vector"]
        assert isinstance(v, np.ndarray) and v.ndim == 2, (type(v), getattr(v, "shape", None))
        return {"total": v.sum(axis=1), "width": np.full(len(v), v.shape[1], dtype=np.int32)}
