#!/usr/bin/env bash
# Drill: a steady rate for SOAK_SECONDS (default 600), sampling tollgate's
# RSS, open file descriptors and the runtime's live tasks every
# SAMPLE_SECONDS (default 10): all must stay flat.
source "$(dirname "$0")/common.sh"
SECONDS_TOTAL=${SOAK_SECONDS:-600}
start_tollgate "sqlite://$OUT/audit.db"
load "$SECONDS_TOTAL" 300 '{"organization_access_level":"limited"}'
load "$SECONDS_TOTAL" 100 '{"organization_access_level":"full"}'
STEP=${SAMPLE_SECONDS:-10}
echo "elapsed_s rss_mb fds live_tasks"
for t in $(seq "$STEP" "$STEP" "$SECONDS_TOTAL"); do
  sleep "$STEP"
  rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$TOLLGATE_PID/status")
  fds=$(ls "/proc/$TOLLGATE_PID/fd" | wc -l)
  tasks=$(curl -sf http://127.0.0.1:19093/metrics | awk '/^tollgate_runtime_alive_tasks / {print $2}')
  echo "$t $rss $fds $tasks"
done
wait_loads
statuses
