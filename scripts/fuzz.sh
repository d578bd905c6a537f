#!/usr/bin/env bash
# Fuzzes every parser that reads outside bytes with libFuzzer (request parser, response parser, JSON reader, SSE
# decoder, both request decoders, the Redis reply parser), each for a bounded time from the committed seed corpus in fuzz/corpus/.
# Any crash, sanitizer report, split/whole disagreement or hang fails the run, and the input is kept under
# .build-fuzz/crashes/.
#
#   scripts/fuzz.sh                  # 30 s per target (what the test command runs)
#   FUZZ_SECONDS=3600 scripts/fuzz.sh json   # one target for an hour; the corpus it grows stays in .build-fuzz/corpus
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${FUZZ_SECONDS:-30}
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(request-parser response-parser json sse openai-request anthropic-request resp)

# Its own build folder: every module is instrumented (coverage for libFuzzer, AddressSanitizer).
swift build --scratch-path .build-fuzz --product SwitchyardFuzz -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING >&2
BIN=.build-fuzz/debug/SwitchyardFuzz
mkdir -p .build-fuzz/crashes
status=0
for target in "${TARGETS[@]}"; do
    corpus=.build-fuzz/corpus/$target
    mkdir -p "$corpus"
    echo "fuzzing $target for ${SECONDS_PER_TARGET}s" >&2
    if ! SWITCHYARD_FUZZ_TARGET=$target "$BIN" "$corpus" "fuzz/corpus/$target" \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix=".build-fuzz/crashes/$target-" -print_final_stats=1 2> ".build-fuzz/$target.log"; then
        echo "FAILED: $target (see .build-fuzz/$target.log and .build-fuzz/crashes/)" >&2
        tail -30 ".build-fuzz/$target.log" >&2
        status=1
    else
        grep -E "stat::number_of_executed_units|cov:" ".build-fuzz/$target.log" | tail -2 >&2 || true
    fi
done
exit $status
