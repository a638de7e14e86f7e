# Shared by the drills: build, start the static tenant (nginx, logging the
# X-Correlation-ID of every request it receives) and tollgate.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REPO=$PWD
OUT=/tmp/tollgate-bench
PG_BASE=${TOLLGATE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tollgate-target}
command -v nginx >/dev/null || apt-get install -y nginx-light
command -v oha >/dev/null || cargo install oha --locked
cargo build --release --quiet
BIN=$CARGO_TARGET_DIR/release/tollgate
rm -rf "$OUT" && mkdir -p "$OUT"
TOLLGATE_PID=
cleanup() {
  [ -n "$TOLLGATE_PID" ] && kill "$TOLLGATE_PID" 2>/dev/null || true
  [ -f "$OUT/upstream.pid" ] && kill "$(cat "$OUT/upstream.pid")" 2>/dev/null || true
}
trap cleanup EXIT
nginx -c "$REPO/bench/nginx/upstream.conf" -p "$OUT"

ITEM=http://127.0.0.1:18083/api/v2/organizations/org_acme/connections/con_saml

start_tollgate() { # audit-url
  TOLLGATE_LISTEN_ADDR=127.0.0.1:18083 TOLLGATE_ADMIN_ADDR=127.0.0.1:19093 \
  TOLLGATE_UPSTREAM_URL=${UPSTREAM:-http://127.0.0.1:18081} TOLLGATE_AUDIT_URL=$1 \
  TOLLGATE_POLICY_DIR=${POLICY_DIR:-$REPO/policies} RUST_LOG=warn \
    "$BIN" serve >> "$OUT/tollgate.log" 2>&1 &
  TOLLGATE_PID=$!
  for _ in $(seq 1 100); do
    curl -sf http://127.0.0.1:19093/readyz >/dev/null && return 0
    sleep 0.1
  done
  echo "tollgate did not become ready" >&2; cat "$OUT/tollgate.log" >&2; exit 1
}

LOADS=()
load() { # seconds rate body  (background; statuses in $OUT/load-*.json)
  oha --no-tui --output-format json -z "$1s" -q "$2" -c 16 -m PATCH \
    -H 'Authorization: Bearer drill' -H 'Content-Type: application/json' -d "$3" "$ITEM" \
    > "$OUT/load-$RANDOM.json" 2>/dev/null &
  LOADS+=($!)
}

wait_loads() { wait "${LOADS[@]}"; LOADS=(); }

statuses() { # summary of every load run
  python3 - <<'PY'
import glob, json, collections
total = collections.Counter()
for f in glob.glob("/tmp/tollgate-bench/load-*.json"):
    try:
        r = json.load(open(f))
    except Exception:
        continue
    total.update({str(k): v for k, v in r.get("statusCodeDistribution", {}).items()})
    total.update({"error: " + k: v for k, v in r.get("errorDistribution", {}).items()})
print(dict(total))
PY
}

# Every exchange the tenant received has its decision in the log.
check_tenant_received_only_recorded() { # audit-url
  sleep 1.5   # nginx flushes its access log every second
  TOLLGATE_AUDIT_URL=$1 "$BIN" audit query --since 1h --limit 10000000 --format jsonl > "$OUT/exchanges.jsonl"
  python3 - <<'PY'
import json
recorded = {}
for line in open("/tmp/tollgate-bench/exchanges.jsonl"):
    e = json.loads(line)
    recorded[e["exchange_id"]] = e
received = set()
for line in open("/tmp/tollgate-bench/tenant-access.log"):
    cid, method, uri, status = line.split()
    if method == "PATCH" and cid != "-":
        received.add(cid)
missing = received - recorded.keys()
unknown = [e for e in recorded.values() if e["outcome"] == "unknown"]
print(f"tenant received {len(received)} PATCHes; {len(received) - len(missing)} have their decision event; missing: {len(missing)}")
print(f"exchanges recorded: {len(recorded)}; outcome unknown: {len(unknown)}")
assert not missing, sorted(missing)[:5]
PY
}
