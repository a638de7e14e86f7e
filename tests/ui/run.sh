#!/usr/bin/env bash
# The reviewers' page in headless Chromium (Debian's `chromium`, driven by
# puppeteer-core pinned here): log in, filter, open an exchange, check
# escaping, the chains and the scan; screenshots in tests/ui/screenshots/.
# Run by .ci/run.
#
#   bash tests/ui/run.sh
set -euo pipefail
cd "$(dirname "$0")"
HERE=$PWD
source ../sandbox.sh
command -v chromium >/dev/null || { apt-get install -y chromium >/dev/null || { echo "chromium is needed for the page checks" >&2; exit 1; }; }
npm ci --silent --no-audit --no-fund >/dev/null
mkdir -p screenshots

start_sandbox TOLLGATE_ADMIN_REVIEWER_TOKEN=review-secret-0123456
[ -n "$ADMIN" ] || { cat "$WORK/err.log" >&2; echo "the admin listener's address was not logged" >&2; exit 1; }
patch() {
  curl -s -D - -o /dev/null -X PATCH "http://127.0.0.1:$PORT/api/v2/organizations/org_acme/connections/con_saml" \
    -H 'Authorization: Bearer reviewer-check' -H 'Content-Type: application/json' -d "$1"
}
# A name an attacker chose, and a denial.
ID=$(patch '{"organization_connection_name":"<script>alert(1)</script>"}' | sed -n 's/^x-tollgate-audit-id: *\([^[:space:]]*\).*/\1/Ip')
patch '{"organization_access_level":"full"}' >/dev/null
(cd "$WORK" && TOLLGATE_UPSTREAM_URL=$TENANT RUST_LOG=warn "$BIN" scan --token sandbox --starter --fail-on never >/dev/null)
node "$HERE/check.js" "http://$ADMIN" review-secret-0123456 "$ID" "$HERE/screenshots"
echo "ui: screenshots in tests/ui/screenshots/"
