#!/usr/bin/env bash
# Fuzzing (cargo-fuzz, libFuzzer): every target in fuzz/ for a bounded time,
# starting from its committed corpus. A crash fails the step; libFuzzer
# prints the input (Base64) and cargo-fuzz the command that replays it.
set -euo pipefail
cd "$(dirname "$0")/../.."

FUZZ_VERSION=0.13.2
SECS=${FUZZ_SECS:-20}

if [ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $FUZZ_VERSION" ]; then
  timeout 900 cargo install cargo-fuzz --version "$FUZZ_VERSION" --locked
fi
# libFuzzer instrumentation needs unstable compiler flags: nightly when the
# machine has it, else the stable compiler told to accept them.
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi
# Its own target dir: nightly, sanitizer flags, nothing to share.
unset CARGO_TARGET_DIR
flags=(--debug-assertions --target-dir fuzz/target)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

start=$SECONDS
timeout 1200 cargo "${toolchain[@]}" fuzz build "${flags[@]}"
echo "fuzz build: $((SECONDS - start)) s"

for target in $(cargo "${toolchain[@]}" fuzz list); do
  # New inputs go to the scratch corpus (the first), not the committed one.
  mkdir -p "$tmp/$target"
  log="$tmp/$target.log"
  if timeout $((SECS + 300)) cargo "${toolchain[@]}" fuzz run "${flags[@]}" "$target" "$tmp/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=4096 >"$log" 2>&1; then
    echo "fuzz $target: $(grep -E '^Done [0-9]+ runs' "$log" | tail -1)"
  else
    # The panic message, the input (Base64) and the command that replays it.
    {
      grep -E -A8 'panicked at|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)' "$log" | head -60
      grep -E '^Base64:' "$log" || true
      grep -E -A2 '^Reproduce with' "$log" || true
    } >&2
    echo "fuzz target $target failed; its input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
echo "fuzzing: $((SECONDS - start)) s in all"
