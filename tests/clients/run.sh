#!/usr/bin/env bash
# The Auth0 clients, unchanged, against `tollgate serve --sandbox` over
# HTTPS: node-auth0 and auth0-python (pinned here) log in with client
# credentials, page through lists, create, update and delete associations
# through both route families, create an organization with connections, get
# a denial with its rule and a warn rule's header; the Deploy CLI exports,
# imports an allowed change and fails on a denied one. Run by .ci/run.
#
#   bash tests/clients/run.sh
set -euo pipefail
cd "$(dirname "$0")"
HERE=$PWD
source ../sandbox.sh

command -v node >/dev/null || { echo "node (20 or newer) is needed for the client checks" >&2; exit 1; }
npm ci --silent --no-audit --no-fund >/dev/null
VENV=${TOLLGATE_CLIENTS_VENV:-$HOME/.cache/tollgate-clients-venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r requirements.txt

mkdir "$WORK/policies"
cp ../../policies/*.toml warn.toml "$WORK/policies/"
start_sandbox
echo "serve --sandbox on port $PORT, CA $CA"

NODE_EXTRA_CA_CERTS=$CA node "$HERE/check.js" "localhost:$PORT"
SSL_CERT_FILE=$CA REQUESTS_CA_BUNDLE=$CA "$VENV/bin/python" "$HERE/check.py" "localhost:$PORT"

# Each SDK was denied once and retried nothing: two denials in the log.
denials=$(cd "$WORK" && "$BIN" audit query --decision deny --format jsonl | wc -l)
[ "$denials" = 2 ] || { echo "expected 2 recorded denials (one per SDK, no retries), found $denials" >&2; exit 1; }
echo "clients: 2 denials recorded, none retried"

bash "$HERE/deploy-cli.sh" "$PORT" "$CA" "$BIN" "$WORK"
echo "clients: every check passed"
