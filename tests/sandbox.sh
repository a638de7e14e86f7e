# Shared by tests/clients/run.sh and tests/ui/run.sh: the binary, built,
# and `serve --sandbox` started in a scratch directory with the extra
# environment given; sets BIN, WORK, PORT (the gateway), ADMIN (the admin
# listener, host:port), TENANT (the simulated tenant's URL) and CA, and
# stops everything on exit.
# Usage: source tests/sandbox.sh; start_sandbox [VAR=value ...]
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tollgate-target}
cargo build --locked --quiet
BIN=$CARGO_TARGET_DIR/debug/tollgate
WORK=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

start_sandbox() {
  # `exec`: the background job *is* the server, so the pid recorded is
  # the one the trap stops (not a subshell that would leave it running).
  (cd "$WORK" && exec env TOLLGATE_LISTEN_ADDR=127.0.0.1:0 TOLLGATE_ADMIN_ADDR=127.0.0.1:0 RUST_LOG=warn,tollgate::app=info "$@" \
    "$BIN" serve --sandbox > out.log 2> err.log) &
  pid=$!
  for _ in $(seq 1 300); do grep -q '^The simulated tenant' "$WORK/out.log" 2>/dev/null && break; sleep 0.1; done
  grep -q '^The simulated tenant' "$WORK/out.log" || { cat "$WORK/err.log" >&2; echo "serve --sandbox did not start" >&2; exit 1; }
  PORT=$(sed -n 's/^tollgate sandbox: HTTPS and HTTP on 127\.0\.0\.1:\([0-9]*\);.*/\1/p' "$WORK/out.log")
  TENANT=$(sed -n 's/^The simulated tenant itself is at \(http[^:]*:[^:]*:[0-9]*\):.*/\1/p' "$WORK/out.log")
  CA=$(sed -n '2s/^ *//p' "$WORK/out.log")
  # The admin listener's port, as it bound it (port 0: no race for one).
  for _ in $(seq 1 100); do grep -q 'admin listening' "$WORK/err.log" 2>/dev/null && break; sleep 0.1; done
  ADMIN=$(grep 'admin listening' "$WORK/err.log" | head -n 1 | sed -n 's/.* addr=\([0-9.:]*\).*/\1/p')
}
