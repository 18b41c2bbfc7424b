"""Oracle for tests/all_or_nothing.rs: a torch.save checkpoint whose zip stores its first
storages and deflates its last one, as a writer other than torch.save may.

  mixed_zip.py OUT   writes OUT: {'a': [1000], 'b': [1000], 'c': [10]} (float32), with
                     data/0 and data/1 stored and data/2 deflated
"""

import io
import sys
import zipfile

import torch


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    sd = {"a": torch.randn(1000), "b": torch.randn(1000), "c": torch.randn(10)}
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    src = zipfile.ZipFile(buf)
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            method = zipfile.ZIP_DEFLATED if info.filename.endswith("data/2") else zipfile.ZIP_STORED
            dst.writestr(info.filename, data, compress_type=method)
    # torch.load reads it.
    loaded = torch.load(out, weights_only=True)
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)


if __name__ == "__main__":
    main()
