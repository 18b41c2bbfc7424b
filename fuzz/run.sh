#!/usr/bin/env bash
# Runs one fuzz target with the limits this crate's fuzzing uses, from the crate root:
#   fuzz/run.sh <target> [seconds] [more libFuzzer flags]     (600 s by default)
# Seeds the corpora first when fuzz/corpus/ is missing (fuzz/seed.sh).
#
# Every target reads its input with the default ReadLimits but a memory budget of 16 MiB
# (fuzz_targets/common.rs, MEMORY_BASE) plus 8 bytes per byte of the input, so that the
# inputs that exhaust it fail fast. -rss_limit_mb follows from that budget:
#   1024 MiB the process without any input: libtorch and AddressSanitizer's shadow memory
#            (measured at 480 to 500 MiB), AddressSanitizer's quarantine (set to 32 MiB
#            here), what its allocator keeps between inputs and the corpus libFuzzer holds
#            (up to 630 MiB in 60 s runs), and LeakSanitizer's scan at exit (950 MiB;
#            1107 MiB after 30 minutes of dcp, whose corpus grew to 49 MB: the scan runs
#            after the fuzzing, and libFuzzer reported nothing)
#   + 2 × the budget of the largest input (-max_len): AddressSanitizer's redzones and its
#            realloc, which copies where glibc's moves pages, cost up to 1.5 times what a
#            plain build uses (measured on the hostile corpus's attacks).
# A run that passes it is a report to read: an input that outgrew its budget.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${1:?usage: fuzz/run.sh <checkpoint|pickle|safetensors|sharded|dcp> [seconds] [flags]}
seconds=${2:-600}
shift $(($# < 2 ? $# : 2))

# The largest input each target takes: checkpoint keeps the hostile corpus's memory attacks
# (the largest, none_bomb.pth, is 400 KB); dcp takes a whole DCP directory (the largest
# fixture, torchtitan/step-10, packs into 163,846 bytes); pickles, safetensors headers and
# indexes are smaller.
case $target in
    checkpoint) max_len=524288 ;;
    pickle) max_len=65536 ;;
    safetensors) max_len=65536 ;;
    sharded) max_len=16384 ;;
    dcp) max_len=262144 ;;
    *) echo "unknown target $target" >&2; exit 2 ;;
esac
memory_base_mb=16 # fuzz_targets/common.rs
budget_mb=$(( memory_base_mb + (8 * max_len + (1 << 20) - 1) / (1 << 20) ))
rss_limit_mb=$(( 1024 + 2 * budget_mb ))

cd "$root"
[ -d fuzz/corpus ] || fuzz/seed.sh
export ASAN_OPTIONS=${ASAN_OPTIONS:-allocator_release_to_os_interval_ms=100:quarantine_size_mb=32}
echo "fuzz/run.sh: $target for $seconds s, -max_len=$max_len -rss_limit_mb=$rss_limit_mb" >&2
RUSTC_BOOTSTRAP=1 exec "$root/scripts/cargo" fuzz run "$target" -- \
    -max_total_time="$seconds" -max_len="$max_len" -rss_limit_mb="$rss_limit_mb" -timeout=10 \
    -print_final_stats=1 "$@"
