#!/usr/bin/env bash
# The Deploy CLI (auth0-deploy-cli, pinned in package.json) against tollgate:
# export the organizations, add a connection (allowed), then grant `full`
# access (denied by the starter rule no-full-access). Called by run.sh with
# the sandbox's port, its CA, the tollgate binary and its working directory.
set -euo pipefail
PORT=$1 CA=$2 BIN=$3 WORK=$4
HERE=$(cd "$(dirname "$0")" && pwd)
A0=$HERE/node_modules/.bin/a0deploy
D=$WORK/deploy-cli
mkdir -p "$D"
cat > "$D/config.json" <<JSON
{"AUTH0_DOMAIN": "localhost:$PORT", "AUTH0_CLIENT_ID": "sandbox-client", "AUTH0_CLIENT_SECRET": "sandbox-secret",
 "AUTH0_INCLUDED_ONLY": ["organizations"]}
JSON
a0() { NODE_EXTRA_CA_CERTS=$CA "$A0" "$@" -c "$D/config.json" > "$D/last.log" 2>&1; }
curl_tenant() { curl -sf --cacert "$CA" "https://localhost:$PORT$1" -H 'Authorization: Bearer check'; }
fail() { echo "deploy-cli: FAILED: $*" >&2; cat "$D/last.log" >&2; exit 1; }

a0 export -f yaml -o "$D/out" || fail "export"
grep -q 'name: acme-saml' "$D/out/tenant.yaml" || fail "the export holds no organization connection"
echo "deploy-cli: ok  export (organizations and their connections)"

# Allowed: globex gets google-oauth2.
python3 - "$D" <<'PY'
import sys
d = sys.argv[1]
s = open(f"{d}/out/tenant.yaml").read()
edited = s.replace("""    connections: []
    display_name: Globex""", """    connections:
      - name: google-oauth2
        assign_membership_on_login: true
        show_as_button: true
    display_name: Globex""")
assert edited != s, "the export's globex entry is not as expected"
open(f"{d}/allowed.yaml", "w").write(edited)
open(f"{d}/denied.yaml", "w").write(edited.replace("organization_access_level: readonly", "organization_access_level: full"))
PY
a0 import -i "$D/allowed.yaml" || fail "the allowed import"
curl_tenant /api/v2/organizations/org_globex/enabled_connections | grep -q '"connection_id":"con_google"' \
  || fail "the allowed connection did not reach the tenant"
echo "deploy-cli: ok  import of an allowed change (the connection is at the tenant)"

# Denied: the CLI fails, the tenant keeps readonly, the log names the rule.
if a0 import -i "$D/denied.yaml"; then fail "the import of a forbidden change succeeded"; fi
grep -q 'Problem updating Enabled Connection con_saml' "$D/last.log" || fail "an unexpected failure"
curl_tenant /api/v2/organizations/org_acme/connections/con_saml | grep -q '"organization_access_level":"readonly"' \
  || fail "the forbidden change reached the tenant"
(cd "$WORK" && "$BIN" audit query --decision deny --org org_acme --rule no-full-access --format jsonl) \
  | grep -q '"operation":"organization_connection.update"' || fail "no recorded denial"
echo "deploy-cli: ok  import of a forbidden change fails; the tenant is unchanged; the denial is in the log"
