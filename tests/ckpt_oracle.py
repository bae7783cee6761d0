#!/usr/bin/python3
"""Independent reader of a dinotrain checkpoint directory (docs/checkpoint-format.md), used by
tests/test_checkpoint.c: checks state.json, the tensor file size, every CRC32 with zlib, and that the
tensors and values are the pattern the test wrote.

  ckpt_oracle.py CKPT_DIR ITERATION
"""
import json
import os
import sys
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_oracle  # noqa: E402


def main():
    d, it = sys.argv[1], int(sys.argv[2])
    with open(os.path.join(d, "state.json"), encoding="utf-8") as f:
        state = json.load(f)
    assert state["format"] == "dinotrain-checkpoint" and state["format_version"] == 1, state
    assert state["iteration"] == it, state["iteration"]
    path = os.path.join(d, state["tensors_file"])
    assert os.path.getsize(path) == state["tensors_bytes"]
    tensors, meta = st_oracle.load(path)
    assert meta.get("iteration") == str(it), meta
    assert sorted(tensors) == sorted(state["crc32"]), (sorted(tensors), sorted(state["crc32"]))
    for name, a in tensors.items():
        crc = "%08x" % (zlib.crc32(np.ascontiguousarray(a).tobytes()) & 0xFFFFFFFF)
        assert crc == state["crc32"][name], (name, crc, state["crc32"][name])
    # the pattern written by the test: t[i] = 0.25 * i - 3, shape (3, 4); and a 1-d of 5 ones
    want = (np.arange(12, dtype=np.float32) * 0.25 - 3).reshape(3, 4)
    assert tensors["teacher.backbone.pos_embed"].dtype == np.float32
    assert np.array_equal(tensors["teacher.backbone.pos_embed"], want)
    assert np.array_equal(tensors["ibot_patch_loss.center"], np.ones(5, np.float32))
    assert state["ints"]["loader.position"] == 2**40 + 3
    assert state["floats"]["lr"] == 1e-4
    assert state["strings"]["config"] == 'a: "b"\n\tc\\'
    print("ckpt_oracle: ok")


if __name__ == "__main__":
    main()
