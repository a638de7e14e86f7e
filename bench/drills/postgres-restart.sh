#!/usr/bin/env bash
# Drill: restart Postgres under load. Requests during the outage get 503 and
# are not forwarded; service resumes by itself; the chain verifies.
source "$(dirname "$0")/common.sh"
psql "$PG_BASE" -qc 'DROP SCHEMA IF EXISTS tollgate_drill CASCADE; CREATE SCHEMA tollgate_drill' >/dev/null
AUDIT="$PG_BASE?options[search_path]=tollgate_drill"
start_tollgate "$AUDIT"
load 20 200 '{"organization_access_level":"limited"}'
sleep 5
echo "restarting PostgreSQL"
pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main restart
echo "PostgreSQL is back"
wait_loads
statuses
curl -sf http://127.0.0.1:19093/readyz && echo
code=$(curl -s -o /dev/null -w '%{http_code}' -X PATCH "$ITEM" -H 'Authorization: Bearer drill' \
  -H 'Content-Type: application/json' -d '{"organization_access_level":"limited"}')
echo "a request after the outage: $code"
[ "$code" = 200 ]
check_tenant_received_only_recorded "$AUDIT"
TOLLGATE_AUDIT_URL=$AUDIT "$BIN" audit verify
