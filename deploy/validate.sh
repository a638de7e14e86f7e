#!/usr/bin/env bash
# Checks what can be checked without a container engine or a cluster: the
# YAML parses and has the expected kinds, the systemd unit verifies, the
# Dockerfile's stages are there.
set -euo pipefail
cd "$(dirname "$0")"

python3 - <<'PY'
import sys, yaml
expected = {
    "kubernetes/configmap.yaml": ["ConfigMap", "ConfigMap"],
    "kubernetes/secret.yaml": ["Secret", "Secret", "Secret"],
    "kubernetes/deployment.yaml": ["Deployment"],
    "kubernetes/service.yaml": ["Service"],
    "kubernetes/pdb.yaml": ["PodDisruptionBudget"],
    "kubernetes/kustomization.yaml": ["Kustomization"],
}
for path, kinds in expected.items():
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    got = [d.get("kind") for d in docs]
    assert got == kinds, f"{path}: kinds {got}, expected {kinds}"
dep = yaml.safe_load(open("kubernetes/deployment.yaml"))
spec = dep["spec"]["template"]["spec"]["containers"][0]
assert dep["spec"]["replicas"] >= 2
assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
assert spec["resources"]["requests"]
# HTTPS on the listener, its certificate and the signing key from Secrets
# that exist in the bundle, and the Service in front of that port.
env = {e["name"]: e.get("value") for e in spec["env"]}
mounts = {m["name"]: m["mountPath"] for m in spec["volumeMounts"]}
volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
secrets = {d["metadata"]["name"]: d for d in yaml.safe_load_all(open("kubernetes/secret.yaml")) if d}
assert env["TOLLGATE_LISTEN_TLS_CERT"].startswith(mounts["tls"] + "/")
assert env["TOLLGATE_LISTEN_TLS_KEY"].startswith(mounts["tls"] + "/")
assert env["TOLLGATE_AUDIT_SIGNING_KEY"].startswith(mounts["signing"] + "/")
assert secrets[volumes["tls"]["secret"]["secretName"]]["type"] == "kubernetes.io/tls"
assert volumes["signing"]["secret"]["secretName"] in secrets
listen_port = int(env["TOLLGATE_LISTEN_ADDR"].rsplit(":", 1)[1])
ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
assert ports["https"] == listen_port, (ports, listen_port)
svc = yaml.safe_load(open("kubernetes/service.yaml"))
assert [p["targetPort"] for p in svc["spec"]["ports"] if p["port"] == 443] == ["https"]
compose = yaml.safe_load(open("compose.yaml"))
assert set(compose["services"]) == {"postgres", "tollgate"}
# The policies shipped in the ConfigMap are the repository's starter set.
import tomllib
cm = list(yaml.safe_load_all(open("kubernetes/configmap.yaml")))[1]["data"]
ids = sorted(r["id"] for f in cm.values() for r in tomllib.loads(f)["rule"])
assert ids == ["no-full-access", "signup-needs-membership", "signup-on-database-only"], ids
tomllib.loads(list(yaml.safe_load_all(open("kubernetes/configmap.yaml")))[0]["data"]["tollgate.toml"])
print("yaml: ok")
PY

if command -v systemd-analyze >/dev/null; then
  # The unit names /usr/local/bin/tollgate; verify against a stand-in if the
  # binary is not installed there.
  tmp=$(mktemp -d)
  sed "s#/usr/local/bin/tollgate#/bin/true#" systemd/tollgate.service > "$tmp/tollgate.service"
  SYSTEMD_LOG_LEVEL=err systemd-analyze verify "$tmp/tollgate.service"
  rm -rf "$tmp"
  echo "systemd: ok"
fi

grep -q '^FROM rust:.* AS build' Dockerfile
grep -q '^USER 10001' Dockerfile
# Every file the build embeds (include_str!, include_bytes!, sqlx::migrate!)
# is inside what the build stage copies: an image that cannot build is
# caught here, without a container engine.
python3 - <<'PY'
import pathlib, re
root = pathlib.Path("..").resolve()
stage = open("Dockerfile").read().split("\nFROM ")[1]
copied = set()
for line in stage.splitlines():
    parts = line.split()
    if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
        copied.update(pathlib.PurePath(p).parts[0] for p in parts[1:-1])
missing = []
for source in sorted((root / "src").rglob("*.rs")):
    text = source.read_text()
    embedded = [
        (source.parent / m).resolve().relative_to(root)
        for m in re.findall(r'include_(?:str|bytes)!\("([^"]+)"\)', text)
    ] + [pathlib.PurePath(m) for m in re.findall(r'migrate!\("([^"]+)"\)', text)]
    for path in embedded:
        if path.parts[0] not in copied:
            missing.append(f"{source.relative_to(root)} embeds {path}")
assert not missing, "the Dockerfile's build stage does not copy: " + "; ".join(missing)
assert {"Cargo.toml", "Cargo.lock", "build.rs", "src"} <= copied, copied
PY
echo "Dockerfile: ok"
