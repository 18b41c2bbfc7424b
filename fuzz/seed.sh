#!/usr/bin/env bash
# Seeds fuzz/corpus/<target>/ from the test fixtures (the corpus folders are gitignored).
#   checkpoint:  tests/fixtures/pytorch/*.pth and *.safetensors, plus tests/fixtures/hostile/*
#                when it exists.
#   pickle:      the data.pkl of each zip-format fixture (pytorch/, and hostile/ when it exists)
#                of up to 64 KiB.
#   safetensors: every *.safetensors file of the fixtures.
#   sharded:     every *.index.json file of the fixtures.
# Run from anywhere: fuzz/seed.sh
set -euo pipefail
fuzz=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fixtures="$fuzz/../tests/fixtures"
mkdir -p "$fuzz/corpus/checkpoint" "$fuzz/corpus/pickle" "$fuzz/corpus/safetensors" \
    "$fuzz/corpus/sharded"

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
for sub in ("pytorch", "hostile"):
    for f in sorted((src / sub).glob("*.pt*")):
        try:
            with zipfile.ZipFile(f) as z:
                for name in z.namelist():
                    # Skip the memory attacks' pickles of hundreds of KiB to MiB: the
                    # checkpoint corpus has them, deflated.
                    if name.endswith("/data.pkl") and z.getinfo(name).file_size <= 64 << 10:
                        with z.open(name) as fp:
                            # zero_crc.pth has CRCs of 0, as PyTorch accepts: skip the check.
                            fp._expected_crc = None
                            prefix = "" if sub == "pytorch" else "hostile-"
                            (dst / (prefix + f.stem + ".pkl")).write_bytes(fp.read())
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError):
            continue  # legacy format, a zip too broken to hold a pickle, or encrypted
PY
for target in checkpoint pickle safetensors sharded; do
    echo "$target: $(ls "$fuzz/corpus/$target" | wc -l) files"
done
