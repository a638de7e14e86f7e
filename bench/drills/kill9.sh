#!/usr/bin/env bash
# Drill: kill -9 tollgate under load, restart it, and check that every
# request the tenant received has its decision event, that the hash chains
# verify, and that exchanges cut off show as outcome "unknown".
source "$(dirname "$0")/common.sh"
AUDIT="sqlite://$OUT/audit.db"
start_tollgate "$AUDIT"
for round in 1 2 3; do
  load 6 400 '{"organization_access_level":"limited"}'
  load 6 100 '{"organization_access_level":"full"}'
  sleep 3
  echo "round $round: kill -9 $TOLLGATE_PID under load"
  kill -9 "$TOLLGATE_PID"; wait "$TOLLGATE_PID" 2>/dev/null || true
  sleep 0.5
  start_tollgate "$AUDIT"
  sleep 3.5
done
wait_loads
statuses
check_tenant_received_only_recorded "$AUDIT"
TOLLGATE_AUDIT_URL=$AUDIT "$BIN" audit verify
