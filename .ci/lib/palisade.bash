# Sourced by CI steps that need a running server: builds palisade and
# starts it, in dev mode, in a directory of its own on a free loopback port.

# Sets PALISADE_BIN.
build_palisade() {
  timeout 1800 cargo build -p palisade --locked
  PALISADE_BIN="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/palisade"
}

# start_palisade DIR [VAR=VALUE...]: serves from DIR with the given
# environment; sets PALISADE_PID and PALISADE_URL (from the startup notice,
# so the port the kernel chose is the one used). Call stop_palisade when done
# (an EXIT trap).
start_palisade() {
  local dir=$1
  shift
  (cd "$dir" && exec env "$@" "$PALISADE_BIN" serve --listen 127.0.0.1:0 >"$dir/stdout.log" 2>"$dir/stderr.log") &
  PALISADE_PID=$!
  PALISADE_URL=
  for _ in $(seq 1 300); do
    PALISADE_URL=$(grep -oE 'listening on https?://[0-9.]+:[0-9]+' "$dir/stderr.log" | head -1 | sed 's/^listening on //' || true)
    [ -n "$PALISADE_URL" ] && return 0
    if ! kill -0 "$PALISADE_PID" 2>/dev/null; then
      echo "palisade did not start:" >&2
      cat "$dir/stderr.log" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "palisade did not start within 60 s:" >&2
  cat "$dir/stderr.log" >&2
  return 1
}

stop_palisade() {
  if [ -n "${PALISADE_PID:-}" ]; then
    kill "$PALISADE_PID" 2>/dev/null || true
    wait "$PALISADE_PID" 2>/dev/null || true
    PALISADE_PID=
  fi
}
