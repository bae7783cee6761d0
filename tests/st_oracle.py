#!/usr/bin/python3
"""A small, independent safetensors reader/writer (struct + json + numpy): the oracle that the C
implementation (common/safetensors.c) is checked against, and the writer the fixture scripts use.

As a command (used by tests/test_safetensors.c):
  st_oracle.py write PATH   writes the interop pattern below
  st_oracle.py check PATH   reads PATH and exits 0 iff it holds exactly the interop pattern
"""
import json
import struct
import sys

import numpy as np

DTYPES = {
    "F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64,
    "I32": np.int32, "U8": np.uint8, "BOOL": np.bool_,
}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


def save(path, tensors, metadata=None):
    """tensors: dict name -> numpy array (C order is forced); metadata: dict str -> str."""
    items = []
    for name, a in tensors.items():
        a = np.asarray(a)
        if not a.flags.c_contiguous:  # (np.ascontiguousarray would turn 0-d arrays into 1-d)
            a = a.copy(order="C")
        if a.dtype not in NAMES:
            raise ValueError(f"{name}: unsupported dtype {a.dtype}")
        items.append((name, a))
    # wider dtypes first (then by name) keeps every tensor aligned to its element size
    items.sort(key=lambda it: (-it[1].dtype.itemsize, it[0]))
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, a in items:
        header[name] = {"dtype": NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, a in items:
            f.write(a.tobytes())


def load(path):
    """Returns (dict name -> numpy array, metadata dict)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = blob[8 + n:]
    out = {}
    for name, h in header.items():
        b, e = h["data_offsets"]
        dt = np.dtype(DTYPES[h["dtype"]])
        count = int(np.prod(h["shape"])) if h["shape"] else 1
        assert 0 <= b <= e <= len(data) and e - b == count * dt.itemsize, f"{path}: bad offsets for {name}"
        out[name] = np.frombuffer(data[b:e], dtype=dt).reshape(h["shape"]).copy()
    return out, meta


# The interop pattern, identical to the one in tests/test_safetensors.c.
def pattern():
    t = {
        "a.f32": (np.arange(15, dtype=np.float32) * 0.5 - 3.0).reshape(3, 5),
        "b.i32": np.array([-2, 0, 7, 2147483647], dtype=np.int32),
        "c.u8": (np.arange(6) * 40).astype(np.uint8).reshape(2, 3),
        "d.f64": np.array([1.0 / 3.0, -1e300], dtype=np.float64),
        "e.i64": np.array([-(2 ** 40), 5, 2 ** 62], dtype=np.int64),
        "scalar": np.array(2.5, dtype=np.float32),
    }
    meta = {"dim": "32", "quote\"back\\slash": "line\nnext \u00e9\u20ac"}
    return t, meta


def main():
    mode, path = sys.argv[1], sys.argv[2]
    ref, ref_meta = pattern()
    if mode == "write":
        save(path, ref, ref_meta)
        return 0
    got, meta = load(path)
    ok = meta == ref_meta and sorted(got) == sorted(ref)
    for k in ref:
        ok = ok and got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape and np.array_equal(got[k], ref[k])
    if not ok:
        print(f"st_oracle: {path} does not hold the interop pattern: meta={meta} names={sorted(got)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
