#!/usr/bin/env bash
# Seeds fuzz/corpus/<target>/ from the test fixtures (the corpus folders are gitignored).
#   checkpoint:  tests/fixtures/pytorch/*.pth and *.safetensors, plus tests/fixtures/hostile/*
#                when it exists.
#   pickle:      the data.pkl of each zip-format fixture (pytorch/, hostile/ when it exists, and
#                training/*.pth, *.ckpt: omegaconf configs and values that refer to themselves)
#                of up to 64 KiB.
#   safetensors: every *.safetensors file of the fixtures.
#   sharded:     every *.index.json file of the fixtures.
#   dcp:         every DCP directory of the fixtures (a folder with a .metadata: distributed/,
#                hostile_distributed/), its .metadata and __<rank>_<n>.distcp files packed
#                into the dcp target's input (fuzz_targets/dcp.rs), up to 262144 bytes
#                (run.sh's -max_len); other files and symlinks are left out.
# Run from anywhere: fuzz/seed.sh
set -euo pipefail
fuzz=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fixtures="$fuzz/../tests/fixtures"
mkdir -p "$fuzz/corpus/checkpoint" "$fuzz/corpus/pickle" "$fuzz/corpus/safetensors" \
    "$fuzz/corpus/sharded" "$fuzz/corpus/dcp"

for f in "$fixtures"/pytorch/*.pth "$fixtures"/pytorch/*.safetensors; do
    [ -f "$f" ] && cp "$f" "$fuzz/corpus/checkpoint/"
done
if [ -d "$fixtures/hostile" ]; then
    for f in "$fixtures"/hostile/*; do
        [ -f "$f" ] && cp "$f" "$fuzz/corpus/checkpoint/hostile-$(basename "$f")"
    done
fi

# Files of the same name in different folders are told apart by their folder.
find "$fixtures" -name '*.safetensors' | while read -r f; do
    rel=${f#"$fixtures"/}
    cp "$f" "$fuzz/corpus/safetensors/${rel//\//-}"
done
find "$fixtures" -name '*.index.json' | while read -r f; do
    rel=${f#"$fixtures"/}
    cp "$f" "$fuzz/corpus/sharded/${rel//\//-}"
done

python3 - "$fixtures" "$fuzz/corpus/pickle" <<'PY'
import pathlib, sys, zipfile
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
files = [(sub, f) for sub in ("pytorch", "hostile") for f in sorted((src / sub).glob("*.pt*"))]
files += [("training", f) for glob in ("*.pth", "*.ckpt")
          for f in sorted((src / "training").glob(glob))]
for sub, f in files:
    prefix = "" if sub == "pytorch" else sub + "-"
    try:
        with zipfile.ZipFile(f) as z:
            for name in z.namelist():
                # Skip the memory attacks' pickles of hundreds of KiB to MiB: the
                # checkpoint corpus has them, deflated.
                if name.endswith("/data.pkl") and z.getinfo(name).file_size <= 64 << 10:
                    with z.open(name) as fp:
                        # zero_crc.pth has CRCs of 0, as PyTorch accepts: skip the check.
                        fp._expected_crc = None
                        (dst / (prefix + f.stem + ".pkl")).write_bytes(fp.read())
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError):
        continue  # legacy format, a zip too broken to hold a pickle, or encrypted
PY

# The dcp target's input: a u32 length and .metadata, then for each item file its rank and
# n (one byte each), a u32 length and the bytes of __<rank>_<n>.distcp (little-endian).
python3 - "$fixtures" "$fuzz/corpus/dcp" <<'PY'
import pathlib, re, struct, sys
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
MAX_LEN, MAX_FILES = 262144, 64  # run.sh's -max_len for dcp; dcp.rs's MAX_FILES
for meta in sorted(src.glob("**/.metadata")):
    folder = meta.parent
    items = []
    for f in folder.iterdir():
        m = re.fullmatch(r"__(\d+)_(\d+)\.distcp", f.name)
        if m and f.is_file() and not f.is_symlink() and max(map(int, m.groups())) < 256:
            items.append((int(m[1]), int(m[2]), f))
    packed = struct.pack("<I", meta.stat().st_size) + meta.read_bytes()
    for rank, n, f in sorted(items)[:MAX_FILES]:
        data = f.read_bytes()
        packed += struct.pack("<BBI", rank, n, len(data)) + data
    name = str(folder.relative_to(src)).replace("/", "-")
    if len(packed) > MAX_LEN:
        print(f"dcp: {name} left out: {len(packed)} bytes packed, over {MAX_LEN}")
        continue
    (dst / name).write_bytes(packed)
PY
for target in checkpoint pickle safetensors sharded dcp; do
    echo "$target: $(ls "$fuzz/corpus/$target" | wc -l) files"
done
