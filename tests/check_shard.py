# Independent reader of the tile shard format, written from docs/shard-format.md alone (struct + zlib):
# test_shard runs it on a shard written by data/shard.c. Prints "count first_slide x y level mpp w h".
import struct
import sys
import zlib

b = open(sys.argv[1], "rb").read()
magic, ver, hsz, n, idx, fsz, icrc = struct.unpack_from("<8sIIQQQI", b, 0)
assert magic == b"DTSHARD1", magic
assert ver == 1 and hsz == 64 and fsz == len(b), (ver, hsz, fsz, len(b))
assert struct.unpack_from("<I", b, 60)[0] == zlib.crc32(b[:60]), "header crc"
assert idx + 16 * n == len(b) and icrc == zlib.crc32(b[idx:idx + 16 * n]), "index"
first = None
for i in range(n):
    off, size = struct.unpack_from("<QQ", b, idx + 16 * i)
    crc, psize, x, y, level, mpp, w, h, slen = struct.unpack_from("<IIqqifIII", b, off)
    assert crc == zlib.crc32(b[off + 4:off + size]), "record %d crc" % i
    assert size == 48 + slen + psize, "record %d size" % i
    slide = b[off + 48:off + 48 + slen].decode()
    if first is None:
        first = (slide, x, y, level, mpp, w, h)
print(n, *first)
