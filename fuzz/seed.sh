#!/usr/bin/env bash
# Seeds fuzz/corpus/<target>/ from the test fixtures (the corpus folders are gitignored).
#   checkpoint: tests/fixtures/pytorch/*.pth and *.safetensors, plus tests/fixtures/hostile/*
#               when it exists.
#   pickle:     the data.pkl of each zip-format fixture (pytorch/, and hostile/ when it exists).
# Run from anywhere: fuzz/seed.sh
set -euo pipefail
fuzz=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fixtures="$fuzz/../tests/fixtures"
mkdir -p "$fuzz/corpus/checkpoint" "$fuzz/corpus/pickle"

for f in "$fixtures"/pytorch/*.pth "$fixtures"/pytorch/*.safetensors; do
    [ -f "$f" ] && cp "$f" "$fuzz/corpus/checkpoint/"
done
if [ -d "$fixtures/hostile" ]; then
    for f in "$fixtures"/hostile/*; do
        [ -f "$f" ] && cp "$f" "$fuzz/corpus/checkpoint/hostile-$(basename "$f")"
    done
fi

python3 - "$fixtures" "$fuzz/corpus/pickle" <<'PY'
import pathlib, sys, zipfile
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for sub in ("pytorch", "hostile"):
    for f in sorted((src / sub).glob("*.pt*")):
        try:
            with zipfile.ZipFile(f) as z:
                for name in z.namelist():
                    if name.endswith("/data.pkl"):
                        with z.open(name) as fp:
                            # zero_crc.pth has CRCs of 0, as PyTorch accepts: skip the check.
                            fp._expected_crc = None
                            prefix = "" if sub == "pytorch" else "hostile-"
                            (dst / (prefix + f.stem + ".pkl")).write_bytes(fp.read())
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError):
            continue  # legacy format, or a zip too broken to hold a pickle
PY
echo "checkpoint: $(ls "$fuzz/corpus/checkpoint" | wc -l) files; pickle: $(ls "$fuzz/corpus/pickle" | wc -l) files"
