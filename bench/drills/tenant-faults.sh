#!/usr/bin/env bash
# Drill: the tenant stalls and resets connections under load. Stalled
# PATCHes get 504 after upstream.timeout, reset or closed ones 502; every
# one is recorded with its transport error; and after each round the
# runtime's live tasks and the open descriptors are back where they started
# while resident memory levels off.
#
#   bash bench/drills/tenant-faults.sh        # 5 rounds of 30 s
#   ROUNDS=10 ROUND_SECONDS=60 bash bench/drills/tenant-faults.sh
source "$(dirname "$0")/common.sh"
ROUNDS=${ROUNDS:-5}
ROUND_SECONDS=${ROUND_SECONDS:-30}
RATE=${RATE:-300}
python3 "$REPO/bench/drills/faulty_tenant.py" 18085 2>"$OUT/faulty-tenant.log" &
FAULTY_PID=$!
trap 'kill $FAULTY_PID 2>/dev/null || true; cleanup' EXIT
sleep 0.5
export TOLLGATE_UPSTREAM_TIMEOUT=2s
UPSTREAM=http://127.0.0.1:18085 start_tollgate "sqlite://$OUT/audit.db"

sample() { # label: the runtime's live tasks, open descriptors, RSS
  local m tasks fds rss
  m=$(curl -sf http://127.0.0.1:19093/metrics)
  tasks=$(awk '/^tollgate_runtime_alive_tasks / {print $2}' <<<"$m")
  fds=$(ls "/proc/$TOLLGATE_PID/fd" | wc -l)
  rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$TOLLGATE_PID/status")
  echo "$1 $tasks $fds $rss" | tee -a "$OUT/samples.txt"
}

# One URL per request, drawn from the four fates (oha's --rand-regex-url; dots are literal there).
URL='http://127.0.0.1:18083/api/v2/organizations/org_acme/connections/con_(saml|stall|reset|close)'
round() {
  oha --no-tui --output-format json -z "${ROUND_SECONDS}s" -q "$RATE" -c 400 --rand-regex-url \
    -m PATCH -H 'Authorization: Bearer drill' -H 'Content-Type: application/json' \
    -d '{"show_as_button":false}' "$URL" > "$OUT/load-$1.json" 2>/dev/null
}

echo "after live_tasks open_fds rss_mb" | tee "$OUT/samples.txt"
sample start
for r in $(seq 1 "$ROUNDS"); do
  round "$r"
  sleep 3   # the last stalled calls reach upstream.timeout
  sample "round-$r"
done
statuses

TOLLGATE_AUDIT_URL="sqlite://$OUT/audit.db" "$BIN" audit verify
TOLLGATE_AUDIT_URL="sqlite://$OUT/audit.db" "$BIN" audit query --since 1h --limit 10000000 --format jsonl > "$OUT/exchanges.jsonl"
python3 - <<'PY'
import collections, json
fates = collections.Counter()
bad = []
for line in open("/tmp/tollgate-bench/exchanges.jsonl"):
    e = json.loads(line)
    fate = e["path"].rsplit("/", 1)[-1]
    kind = (e.get("error") or "").split(":", 1)[0] or None
    key = (fate, e["outcome"], e.get("status"), kind)
    fates[key] += 1
    expected = {
        "con_saml": ("completed", 200, None),
        "con_stall": ("failed", None, "timeout"),
        "con_reset": ("failed", None, "protocol"),
        "con_close": ("failed", None, "protocol"),
    }[fate]
    if key[1:] != expected:
        bad.append(e)
for k, v in sorted(fates.items(), key=str):
    print("recorded (connection, outcome, status, error):", k, v)
assert not bad, bad[:3]
PY
python3 - <<'PY'
rows = [l.split() for l in open("/tmp/tollgate-bench/samples.txt")][1:]
start, rounds = rows[0], rows[1:]
tasks = [int(float(r[1])) for r in rounds]
fds = [int(r[2]) for r in rounds]
print(f"live tasks: start {start[1]}, after each round {tasks}")
print(f"open fds:   start {start[2]}, after each round {fds}")
print(f"rss MB:     start {start[3]}, after each round {[r[3] for r in rounds]}")
# Each round fails thousands of calls; a leak per failed call would show
# in thousands. What moves by a few is the idle connection pool.
assert max(tasks) - min(tasks) <= 10, "live tasks grow from round to round"
assert max(fds) - min(fds) <= 10, "descriptors grow from round to round"
PY
