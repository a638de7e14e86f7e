#!/usr/bin/env bash
# Hostile clients and fan-out, against the release build in front of the
# static tenant (nginx):
#   1. 2,000 idle connections (8 client addresses) and 200 slow-body
#      connections open; a normal client's PATCH latency over 100 requests.
#   2. A half-sent body: dropped at limits.body_timeout.
#   3. An SSO ticket at limits.max_elements naming 50 distinct organizations
#      (a rule reads org): tenant calls, and open descriptors before, right
#      after, and after the tenant pool's idle timeout.
#
#   bash bench/drills/hostile-clients.sh
source "$(dirname "$0")/common.sh"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
POLICY_DIR=$OUT/policies
mkdir -p "$POLICY_DIR"
cat > "$POLICY_DIR/org.toml" <<'TOML'
[[rule]]
id = "known-organizations"
deny = 'org.name == null'
message = "unknown organization"
TOML
start_tollgate "sqlite://$OUT/audit.db"
python3 "$REPO/bench/drills/hostile_clients.py" "$OUT"
echo "tollgate log (warnings and errors):"
grep -E "WARN|ERROR" "$OUT/tollgate.log" | sort | uniq -c | sort -rn | head -5 || true
