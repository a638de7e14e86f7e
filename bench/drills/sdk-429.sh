#!/usr/bin/env bash
# How the Auth0 SDKs (node-auth0 7.1.0, auth0-python 6.8.0, pinned in sdk/)
# take a tenant 429 that reaches them through tollgate: tollgate (HTTPS, a
# CA made here) in front of a tenant whose every answer is 429 with
# Retry-After: 1. One governed PATCH per SDK; the tenant logs each request
# it receives, so the SDK's retries and their spacing show as context
# lookups (each retry is a new exchange, judged and recorded again).
#
#   bash bench/drills/sdk-429.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
OUT=/tmp/tollgate-sdk-drill
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tollgate-target}
cargo build --release --quiet
BIN=$CARGO_TARGET_DIR/release/tollgate
rm -rf "$OUT" && mkdir -p "$OUT"
(cd bench/drills/sdk && npm install --silent --no-audit --no-fund >/dev/null)
python3 -m venv "$OUT/venv" && "$OUT/venv/bin/pip" install -q -r bench/drills/sdk/requirements.txt

# A CA and a certificate for 127.0.0.1.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=drill-ca \
  -addext basicConstraints=critical,CA:TRUE -keyout "$OUT/ca.key" -out "$OUT/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout "$OUT/key.pem" -out "$OUT/req.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' > "$OUT/ext.cnf"
openssl x509 -req -in "$OUT/req.csr" -CA "$OUT/ca.pem" -CAkey "$OUT/ca.key" -CAcreateserial \
  -days 1 -extfile "$OUT/ext.cnf" -out "$OUT/cert.pem" 2>/dev/null

pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
python3 bench/drills/sdk/exhausted_tenant.py 18091 > "$OUT/tenant.log" & pids+=($!)
TOLLGATE_LISTEN_ADDR=127.0.0.1:18443 TOLLGATE_ADMIN_ADDR=127.0.0.1:19443 \
TOLLGATE_LISTEN_TLS_CERT=$OUT/cert.pem TOLLGATE_LISTEN_TLS_KEY=$OUT/key.pem \
TOLLGATE_UPSTREAM_URL=http://127.0.0.1:18091 TOLLGATE_AUDIT_URL=sqlite://$OUT/audit.db \
TOLLGATE_POLICY_DIR=$REPO/policies RUST_LOG=warn "$BIN" serve > "$OUT/tollgate.log" 2>&1 & pids+=($!)
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:19443/healthz >/dev/null && break; sleep 0.1; done

run() { # name command...
  local before; before=$(wc -l < "$OUT/tenant.log")
  "${@:2}"
  sleep 0.2
  echo "  requests the tenant received (seconds since it started):"
  tail -n +$((before + 1)) "$OUT/tenant.log" | sed 's/^/    /'
}
echo "node-auth0 7.1.0:"
run node env NODE_EXTRA_CA_CERTS="$OUT/ca.pem" node bench/drills/sdk/update.js 127.0.0.1:18443
echo "auth0-python 6.8.0:"
run python env SSL_CERT_FILE="$OUT/ca.pem" "$OUT/venv/bin/python" bench/drills/sdk/update.py 127.0.0.1:18443
echo "the audit log:"
TOLLGATE_AUDIT_URL=sqlite://$OUT/audit.db "$BIN" audit query --format table
