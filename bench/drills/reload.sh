#!/usr/bin/env bash
# Drill: rewrite a policy file every second under load. No request may fail
# because of a reload (every answer is the tenant's 200 or a policy 403).
source "$(dirname "$0")/common.sh"
POLICY_DIR=$OUT/policies
cp -r "$REPO/policies" "$POLICY_DIR"
start_tollgate "sqlite://$OUT/audit.db"
load 20 300 '{"organization_access_level":"limited"}'
load 20 100 '{"organization_access_level":"full"}'
for i in $(seq 1 20); do
  printf '[[rule]]\nid = "drill-%s"\ndeny = %s\nmessage = "m"\nmode = "warn"\n' "$i" "'after.show_as_button == false'" > "$POLICY_DIR/drill.toml"
  sleep 1
done
wait_loads
statuses
curl -s http://127.0.0.1:19093/metrics | grep "^tollgate_policy_reloads_total"
curl -s http://127.0.0.1:19093/metrics | grep "^tollgate_requests_total"
