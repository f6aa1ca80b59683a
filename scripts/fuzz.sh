#!/bin/sh
# fuzz.sh NAME [SECONDS] - build the libFuzzer target tests/fuzz/fuzz_NAME.c with AddressSanitizer
# and UndefinedBehaviorSanitizer into build/fuzz/, then run it for SECONDS (default 60) on the
# corpus build/fuzz/corpus-NAME, seeded from tests/fuzz/seeds/NAME-* (and using the dictionary
# tests/fuzz/NAME.dict if there is one). A crash, leak, sanitizer report or failed check
# leaves its input in build/fuzz/artifacts-NAME/ and makes this script exit non-zero.
# A target that needs other C files to link names them in a line of its source such as
#   /* fuzz-sources: bindings/crypto.c bindings/stream.c */
#   scripts/fuzz.sh dump 300
set -eu
cd "$(dirname "$0")/.."
name=${1:?usage: scripts/fuzz.sh NAME [SECONDS]}
seconds=${2:-60}
src=tests/fuzz/fuzz_$name.c
[ -f "$src" ] || { echo "fuzz: no target $src" >&2; exit 2; }
command -v clang >/dev/null || { echo "fuzz: clang is needed (apt-get install clang)" >&2; exit 2; }

out=build/fuzz
bin=$out/fuzz_$name
corpus=$out/corpus-$name
artifacts=$out/artifacts-$name
mkdir -p "$out" "$corpus" "$artifacts"

extra=$(sed -n 's|.*fuzz-sources:\([^*]*\)\*/.*|\1|p' "$src" | head -n 1)
# shellcheck disable=SC2046,SC2086
clang -std=c11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -Wno-unused-parameter \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer \
    -Iruntime -Ibindings $(pkg-config --cflags lua5.4 openssl yaml-0.1) \
    -o "$bin" "$src" $extra $(pkg-config --libs lua5.4 openssl yaml-0.1) -lm

for seed in tests/fuzz/seeds/"$name"-*; do
    [ -f "$seed" ] && cp "$seed" "$corpus/"
done

set -- -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts/"
[ -f "tests/fuzz/$name.dict" ] && set -- "$@" -dict="tests/fuzz/$name.dict"
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} \
    "$bin" "$@" "$corpus"
