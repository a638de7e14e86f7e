#!/usr/bin/env bash
# Load runs: tollgate against the physical limit (the upstream directly) and
# its peer (nginx as a plain reverse proxy), at fixed rates and at
# saturation, interleaved in one run.
#
#   bash bench/load.sh                 # 10 s per run
#   DURATION=30s bash bench/load.sh
#   WORKLOADS=patch-mixed RATES=max bash bench/load.sh   # a subset
#   BEFORE_BIN=/path/to/older/tollgate bash bench/load.sh  # also an older build, same run
#   TARGETS="before-postgres tollgate-postgres" ...        # only these targets
#
# Needs nginx (Debian's package) and oha (cargo install oha); installs them
# if missing. Everything listens on 127.0.0.1 and stops when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=/tmp/tollgate-bench
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
PG_BASE=${TOLLGATE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tollgate-target}

command -v nginx >/dev/null || apt-get install -y nginx-light
command -v oha >/dev/null || cargo install oha --locked
cargo build --release --quiet
BIN=$CARGO_TARGET_DIR/release/tollgate

rm -rf "$OUT" && mkdir -p "$OUT"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in upstream proxy; do [ -f "$OUT/$f.pid" ] && kill "$(cat "$OUT/$f.pid")" 2>/dev/null || true; done
}
trap cleanup EXIT

nginx -c "$REPO/bench/nginx/upstream.conf" -p "$OUT"
nginx -c "$REPO/bench/nginx/proxy.conf" -p "$OUT"

psql "$PG_BASE" -qc 'DROP SCHEMA IF EXISTS tollgate_bench CASCADE; CREATE SCHEMA tollgate_bench' >/dev/null

start_tollgate() { # name port admin-port audit-url
  TOLLGATE_LISTEN_ADDR=127.0.0.1:$2 TOLLGATE_ADMIN_ADDR=127.0.0.1:$3 \
  TOLLGATE_UPSTREAM_URL=http://127.0.0.1:18081 TOLLGATE_AUDIT_URL=$4 \
  TOLLGATE_POLICY_DIR=$REPO/policies RUST_LOG=warn \
    "$BIN" serve > "$OUT/$1.log" 2>&1 &
  pids+=($!)
  echo $! > "$OUT/$1.pid"
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$3/readyz" >/dev/null && return 0
    sleep 0.1
  done
  echo "tollgate ($1) did not become ready" >&2; cat "$OUT/$1.log" >&2; exit 1
}
start_tollgate tollgate-sqlite 18083 19093 "sqlite://$OUT/audit.db"
start_tollgate tollgate-postgres 18084 19094 "$PG_BASE?options[search_path]=tollgate_bench"

declare -A PORT=([direct]=18081 [nginx]=18082 [tollgate-sqlite]=18083 [tollgate-postgres]=18084
                 [before-sqlite]=18085 [before-postgres]=18086)
TOLLGATES="tollgate-sqlite tollgate-postgres"
if [ -n "${BEFORE_BIN:-}" ]; then
  psql "$PG_BASE" -qc 'DROP SCHEMA IF EXISTS tollgate_bench_before CASCADE; CREATE SCHEMA tollgate_bench_before' >/dev/null
  BIN_NOW=$BIN BIN=$BEFORE_BIN
  start_tollgate before-sqlite 18085 19095 "sqlite://$OUT/audit-before.db"
  start_tollgate before-postgres 18086 19096 "$PG_BASE?options[search_path]=tollgate_bench_before"
  BIN=$BIN_NOW
  TOLLGATES="before-sqlite tollgate-sqlite before-postgres tollgate-postgres"
fi
ITEM=/api/v2/organizations/org_acme/connections/con_saml
AUTH=(-H 'Authorization: Bearer bench')
JSON=(-H 'Content-Type: application/json')

run() { # target workload rate
  local target=$1 workload=$2 rate=$3 port=${PORT[$1]} args=()
  case $workload in
    # Half allowed, half denied, drawn per request: enabling signup is
    # allowed on the database connection (con_db) and denied on the SAML one
    # (signup-on-database-only). oha's --rand-regex-url treats dots literally.
    patch-mixed) args=(-m PATCH "${AUTH[@]}" "${JSON[@]}" --rand-regex-url
                       -d '{"is_signup_enabled":true,"assign_membership_on_login":true}'
                       "http://127.0.0.1:$port/api/v2/organizations/org_acme/connections/con_(db|saml)") ;;
    # Automation's shape: changes spread over 1,000 organization/connection
    # pairs, drawn at random per request.
    patch-spread) args=(-m PATCH "${AUTH[@]}" "${JSON[@]}" --rand-regex-url
                        -d '{"organization_access_level":"limited"}'
                        "http://127.0.0.1:$port/api/v2/organizations/org_[0-9]{3}/connections/con_db") ;;
    # One hot association: every change to it waits for the one before.
    patch-allow) args=(-m PATCH "${AUTH[@]}" "${JSON[@]}" -d '{"organization_access_level":"limited"}' "http://127.0.0.1:$port$ITEM") ;;
    patch-deny)  args=(-m PATCH "${AUTH[@]}" "${JSON[@]}" -d '{"organization_access_level":"full"}' "http://127.0.0.1:$port$ITEM") ;;
    get)         args=("${AUTH[@]}" "http://127.0.0.1:$port/api/v2/organizations") ;;
  esac
  local rate_args=()
  [ "$rate" != max ] && rate_args=(-q "$rate")
  local pid cpu0 cpu1
  pid=$(cat "$OUT/$target.pid" 2>/dev/null || true)
  [ -n "$pid" ] && cpu0=$(awk '{print $14+$15}' "/proc/$pid/stat")
  sleep 1.2 # the tenant's access log is flushed each second
  local calls0; calls0=$(wc -l < "$OUT/tenant-access.log" 2>/dev/null || echo 0)
  oha --no-tui --output-format json -z "$DURATION" -c "$CONNECTIONS" "${rate_args[@]}" "${args[@]}" > "$OUT/run.json"
  local cpu="" rss=""
  if [ -n "$pid" ]; then
    cpu1=$(awk '{print $14+$15}' "/proc/$pid/stat")
    cpu=$(awk -v a="$cpu0" -v b="$cpu1" -v hz="$(getconf CLK_TCK)" -v d="${DURATION%s}" \
      'BEGIN { printf "%.0f%%", (b - a) / hz / d * 100 }')
    rss=$(awk '/VmHWM/ {printf "%.1f MB", $2/1024}' "/proc/$pid/status")
  fi
  sleep 1.2
  local calls1; calls1=$(wc -l < "$OUT/tenant-access.log" 2>/dev/null || echo 0)
  python3 - "$target" "$workload" "$rate" "$cpu" "$rss" "$((calls1 - calls0))" <<'PY' | tee -a "$OUT/results.txt"
import json, sys
target, workload, rate, cpu, rss, calls = sys.argv[1:]
r = json.load(open("/tmp/tollgate-bench/run.json"))
p = r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
done = sum(codes.values()) or 1
ms = lambda s: f"{s*1000:.2f}" if s is not None else "-"
print(f"| {workload} | {rate} | {target} | {r['summary']['requestsPerSec']:.0f} | {ms(p['p50'])} | {ms(p['p99'])} | {ms(p.get('p99.9'))} | {' '.join(f'{k}:{v}' for k,v in sorted(codes.items()))} | {int(calls)/done:.2f} | {cpu or '-'} | {rss or '-'} |")
PY
}

echo "| workload | rate | target | rps | p50 ms | p99 ms | p99.9 ms | statuses | tenant calls/req | tollgate CPU | tollgate peak RSS |" | tee "$OUT/results.txt"
echo "|---|---|---|---|---|---|---|---|---|---|---|" | tee -a "$OUT/results.txt"
for workload in ${WORKLOADS:-patch-spread patch-mixed patch-allow patch-deny get}; do
  targets="direct nginx $TOLLGATES"
  # A deny never reaches the tenant: direct and nginx have nothing to compare.
  [ "$workload" = patch-deny ] && targets="$TOLLGATES"
  targets=${TARGETS:-$targets}
  for rate in ${RATES:-100 1000 max}; do
    for target in $targets; do
      run "$target" "$workload" "$rate"
    done
  done
done
echo
echo "audit commit durations over the whole run (cumulative buckets, seconds):"
for port in 19093 19094; do
  curl -sf "http://127.0.0.1:$port/metrics" | python3 -c '
import re, sys
b = [(m[1], int(float(m[2]))) for m in re.finditer(r"tollgate_audit_write_duration_seconds_bucket\{le=\"([^\"]+)\"\} (\S+)", sys.stdin.read())]
print("  " + " ".join(f"<={le}:{n}" for le, n in b if le in ("0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "+Inf")))'
done
echo
echo "audit logs after the runs:"
TOLLGATE_AUDIT_URL="sqlite://$OUT/audit.db" "$BIN" audit verify
TOLLGATE_AUDIT_URL="$PG_BASE?options[search_path]=tollgate_bench" "$BIN" audit verify
echo "results: $OUT/results.txt"
