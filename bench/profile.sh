#!/usr/bin/env bash
# Profiles tollgate at saturation: the static upstream of bench/load.sh,
# tollgate with a SQLite audit log, one oha workload, and `perf record`
# attached to tollgate for the run. Prints where the samples fall, by shared
# object and by symbol (self time); the raw data stays in
# /tmp/tollgate-bench/perf.data for `perf report`.
#
#   bash bench/profile.sh                    # patch-allow, 15 s
#   WORKLOAD=get bash bench/profile.sh       # patch-allow | patch-deny | get
source "$(dirname "$0")/drills/common.sh"
WORKLOAD=${WORKLOAD:-patch-allow}
DURATION=${DURATION:-15}
command -v perf >/dev/null || apt-get install -y linux-perf
start_tollgate "sqlite://$OUT/audit.db"

H=(-H 'Authorization: Bearer bench')
case $WORKLOAD in
  patch-allow) args=(-m PATCH "${H[@]}" -H 'Content-Type: application/json' -d '{"organization_access_level":"limited"}' "$ITEM") ;;
  patch-deny)  args=(-m PATCH "${H[@]}" -H 'Content-Type: application/json' -d '{"organization_access_level":"full"}' "$ITEM") ;;
  get)         args=("${H[@]}" http://127.0.0.1:18083/api/v2/organizations) ;;
esac
oha --no-tui -z 3s -c 32 "${args[@]}" >/dev/null   # warm up
perf record -F 499 --call-graph dwarf,16384 -p "$TOLLGATE_PID" -o "$OUT/perf.data" -- sleep "$DURATION" 2>/dev/null &
PERF=$!
oha --no-tui --output-format json -z "${DURATION}s" -c 32 "${args[@]}" > "$OUT/run.json"
wait $PERF
python3 -c "import json; r = json.load(open('$OUT/run.json')); print(f\"$WORKLOAD: {r['summary']['requestsPerSec']:.0f} rps under perf\")"
echo "--- by shared object (self) ---"
perf report -i "$OUT/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -12
echo "--- by symbol (self) ---"
perf report -i "$OUT/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | sed -E "s/ +-? +-? *$//" | head -${TOP:-40}
