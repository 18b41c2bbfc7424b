"""Corrupts one record of a zip checkpoint, for tests/crc.rs, and reports what torch.load
makes of the result.

    corrupt_zip.py SRC DST SUFFIX flip:N[:MASK]  # copy SRC to DST, byte N of the record's
                                                 # data xor MASK (default 0xff)
    corrupt_zip.py SRC DST SUFFIX crc            # copy, the record's recorded CRC-32 xor 1
    corrupt_zip.py load PATH                     # torch.load(PATH): "ok <keys>" or
                                                 # "error <type>"

SUFFIX picks the record by the end of its name (`data.pkl`, `data/0`). A CRC is recorded in
the central directory and in the local header (zero there when a data descriptor holds it).
"""

import struct
import sys
import zipfile


def data_start(data, info):
    n, m = struct.unpack_from("<HH", data, info.header_offset + 26)
    return info.header_offset + 30 + n + m


def corrupt(src, dst, suffix, mode):
    data = bytearray(open(src, "rb").read())
    with zipfile.ZipFile(src) as z:
        [info] = [i for i in z.infolist() if i.filename.endswith(suffix)]
    if mode.startswith("flip:"):
        at, _, mask = mode[5:].partition(":")
        data[data_start(data, info) + int(at)] ^= int(mask or "255")
    elif mode == "crc":
        local = info.header_offset + 14
        if struct.unpack_from("<I", data, local)[0] != 0:
            struct.pack_into("<I", data, local, info.CRC ^ 1)
        pos = data.rfind(b"PK\x05\x06")
        p = struct.unpack_from("<I", data, pos + 16)[0]
        while data[p:p + 4] == b"PK\x01\x02":
            n, m, k = struct.unpack_from("<HHH", data, p + 28)
            if data[p + 46:p + 46 + n].decode() == info.filename:
                struct.pack_into("<I", data, p + 16, info.CRC ^ 1)
            p += 46 + n + m + k
    else:
        raise SystemExit(f"unknown mode {mode}")
    open(dst, "wb").write(bytes(data))


def load(path):
    import torch
    try:
        sd = torch.load(path, weights_only=True)
        print("ok", " ".join(sorted(sd)))
    except Exception as e:  # noqa: BLE001 - the type is the answer
        print("error", type(e).__name__)


if __name__ == "__main__":
    if sys.argv[1] == "load":
        load(sys.argv[2])
    else:
        corrupt(*sys.argv[1:5])
