#!/usr/bin/env bash
# Drill: a steady rate for SOAK_SECONDS (default 600), sampling tollgate's
# RSS and open file descriptors every 10 s: both must stay flat.
source "$(dirname "$0")/common.sh"
SECONDS_TOTAL=${SOAK_SECONDS:-600}
start_tollgate "sqlite://$OUT/audit.db"
load "$SECONDS_TOTAL" 300 '{"organization_access_level":"limited"}'
load "$SECONDS_TOTAL" 100 '{"organization_access_level":"full"}'
echo "elapsed_s rss_mb fds"
for t in $(seq 10 10 "$SECONDS_TOTAL"); do
  sleep 10
  rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$TOLLGATE_PID/status")
  fds=$(ls "/proc/$TOLLGATE_PID/fd" | wc -l)
  echo "$t $rss $fds"
done
wait_loads
statuses
