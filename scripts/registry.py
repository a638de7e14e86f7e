#!/usr/bin/env python3
"""Generates tollgate's route registry from a Management API description.

    python3 scripts/registry.py PATH/TO/management-api.openapi.json [OUT]

Reads an OpenAPI 3 description of Auth0's Management API and writes
tollgate's own table of facts (default: src/registry/operations.json): for
every operation its method, path template, tollgate operation id
(`resource.verb`), path parameters, the OAuth scopes it needs, the resource
it changes and the GET that reads it, the media types its body may come in,
its body and answer schemas reduced to what validation needs (types, enums,
lengths, limits, required fields, closed or open), and the JSON pointers of
request and answer fields that are secrets. Nothing else of the description
is kept: no summaries, no descriptions, no examples.

The overlay (scripts/registry-overlay.json, hand-written) corrects what the
schema gets wrong or cannot say: operation ids kept from before the registry,
secrets the naming heuristics miss, fields that are not secrets despite
their names.
"""

import datetime
import hashlib
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OVERLAY = HERE / "registry-overlay.json"
DEFAULT_OUT = HERE.parent / "src" / "registry" / "operations.json"
PREFIX = "/api/v2"
METHODS = ("get", "post", "put", "patch", "delete")

# Schema keywords kept: what validation reads. Everything else goes.
KEEP = {
    "type", "enum", "const", "format", "default",
    "minLength", "maxLength", "pattern",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "minItems", "maxItems", "uniqueItems",
    "minProperties", "maxProperties", "required",
    "properties", "additionalProperties", "items",
    "oneOf", "anyOf", "allOf", "$ref", "nullable",
}

# Names of string fields that hold secrets: the whole name, or its end.
SECRET_NAMES = {
    "secret", "client_secret", "password", "private_key", "api_key",
    "access_token", "id_token", "token", "ticket", "recovery_code",
    "otp", "pem", "passphrase", "signing_secret", "shared_secret",
    "authorization_token", "key_material", "cert_key", "basic_auth",
}
SECRET_SUFFIXES = ("_secret", "_password", "_private_key", "_api_key", "_token", "_passphrase")


# A write to a literal path segment starting with one of these verbs, where
# nothing can be read, is an action on what precedes it.
ACTION_VERBS = {
    "clear", "deploy", "invalidate", "preview", "redeliver", "register", "rekey",
    "reset", "revoke", "rollback", "rotate", "test", "try", "verify", "retry",
}

# Words that end in "s" and are not plurals.
NOT_PLURAL = {"sms", "sns", "apns", "status", "settings", "credentials_details", "logs_search"}


def singular(word):
    word = word.replace("-", "_")
    if word in NOT_PLURAL:
        return word
    for plural, one in (("ies", "y"), ("sses", "ss"), ("xes", "x"), ("ches", "ch"), ("shes", "sh")):
        if word.endswith(plural):
            return word[: -len(plural)] + one
    if word.endswith("s") and not word.endswith("ss") and not word.endswith("us"):
        return word[:-1]
    return word


def is_param(segment):
    return segment.startswith("{") and segment.endswith("}")


def operation_id(method, template, methods_here):
    """`resource.verb` from the path's shape: the literal segments name the
    resource (singular, nested under the segment before each parameter),
    the method and the shape name the verb."""
    segments = [s for s in template.strip("/").split("/") if s]
    literals = []
    for i, s in enumerate(segments):
        if not is_param(s):
            literals.append((i, s))
    last = segments[-1]
    item = is_param(last)
    # The resource: the literal segments, each followed by a parameter taken
    # as one level (`organizations/{id}/members` → organization_member).
    parts = []
    for _, s in literals:
        # `actions/actions/{id}` is the action, not the action's action.
        if not parts or parts[-1] != singular(s):
            parts.append(singular(s))
    verb = None
    if not item and method != "DELETE" and "GET" not in methods_here and len(segments) > 1 \
            and last.split("-")[0] in ACTION_VERBS:
        # A write to a literal with nothing to GET there is an action on
        # what precedes it (`actions/{id}/deploy` → action.deploy,
        # `keys/signing/rotate` → key_signing.rotate,
        # `tickets/password-change` → ticket.password_change).
        verb = last.replace("-", "_")
        parts = parts[:-1]
    if verb is None:
        verb = {
            "POST": "create",
            "PATCH": "update",
            "PUT": "replace",
            "DELETE": "delete",
            "GET": "read" if item else "list",
        }[method]
    return "_".join(parts) + "." + verb


def strip(schema):
    if isinstance(schema, list):
        return [strip(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for k, v in schema.items():
        if k not in KEEP:
            continue
        if k == "properties":
            out[k] = {name: strip(s) for name, s in v.items()}
        elif k in ("items", "additionalProperties", "oneOf", "anyOf", "allOf"):
            out[k] = strip(v)
        elif k == "$ref":
            out[k] = v.rsplit("/", 1)[-1]
        else:
            out[k] = v
    return out


def refs(schema, into):
    """Every component a schema names, transitively (`into`: names seen)."""
    stack = [schema]
    while stack:
        s = stack.pop()
        if isinstance(s, list):
            stack.extend(s)
        elif isinstance(s, dict):
            for k, v in s.items():
                if k == "$ref" and isinstance(v, str):
                    name = v.rsplit("/", 1)[-1]
                    if name not in into:
                        into.add(name)
                        stack.append(COMPONENTS.get(name, {}))
                elif isinstance(v, (dict, list)):
                    stack.append(v)


def component(schema):
    """The schema a `$ref` names, or the schema itself."""
    ref = schema.get("$ref")
    return COMPONENTS.get(ref.rsplit("/", 1)[-1], {}) if ref else schema


def types_of(schema):
    t = schema.get("type")
    if isinstance(t, list):
        return set(t)
    return {t} if t else set()


def secret_pointers(schema, at="", seen=None, depth=0):
    """JSON pointers (`*` for any array element or map value) of string
    fields whose names say they hold a secret."""
    seen = set() if seen is None else seen
    if depth > 12 or not isinstance(schema, dict):
        return []
    ref = schema.get("$ref")
    if ref:
        ref = ref.rsplit("/", 1)[-1]
        if ref in seen:
            return []
        return secret_pointers(COMPONENTS.get(ref, {}), at, seen | {ref}, depth + 1)
    found = []
    for key in ("oneOf", "anyOf", "allOf"):
        for s in schema.get(key, []):
            found += secret_pointers(s, at, seen, depth + 1)
    for name, s in (schema.get("properties") or {}).items():
        here = f"{at}/{name}"
        target = component(s) if isinstance(s, dict) else {}
        named = name in SECRET_NAMES or name.endswith(SECRET_SUFFIXES)
        kinds = types_of(target)
        if named and (not kinds or "string" in kinds or "array" in kinds and not target.get("items", {}).get("properties")):
            found.append(here)
        else:
            found += secret_pointers(s, here, seen, depth + 1)
    if isinstance(schema.get("items"), dict):
        found += secret_pointers(schema["items"], f"{at}/*", seen, depth + 1)
    if isinstance(schema.get("additionalProperties"), dict):
        found += secret_pointers(schema["additionalProperties"], f"{at}/*", seen, depth + 1)
    return found


def body_of(op):
    content = (op.get("requestBody") or {}).get("content") or {}
    media = sorted(content)
    schema = None
    for m in ("application/json", "multipart/form-data", "application/x-www-form-urlencoded"):
        if m in content and content[m].get("schema"):
            schema = content[m]["schema"]
            break
    return media, schema


def answer_of(op):
    for status in ("200", "201", "202"):
        r = (op.get("responses") or {}).get(status)
        if r and r.get("content"):
            for m, c in r["content"].items():
                if c.get("schema"):
                    return int(status), c["schema"]
        if r:
            return int(status), None
    return None, None


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    spec_path = Path(sys.argv[1])
    out_path = Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_OUT
    raw = spec_path.read_bytes()
    spec = json.loads(raw)
    global COMPONENTS
    COMPONENTS = spec.get("components", {}).get("schemas", {})
    overlay = json.loads(OVERLAY.read_text())
    paths = spec["paths"]

    operations = []
    needed = set()
    for template, item in sorted(paths.items()):
        methods_here = {m.upper() for m in item if m in METHODS}
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            m = method.upper()
            full = PREFIX + template
            oid = operation_id(m, template, methods_here)
            params = re.findall(r"\{([^}]+)\}", template)
            scopes = sorted({
                s for sec in op.get("security", []) for s in sec.get("oAuth2ClientCredentials", [])
            })
            media, body = body_of(op)
            status, answer = answer_of(op)
            # The resource an item route changes is read by the GET of the
            # same template; a collection's create by the GET of its item.
            read = None
            if "GET" in methods_here and is_param(template.rstrip("/").split("/")[-1]):
                read = full
            entry = {
                "id": oid,
                "method": m,
                "path": full,
                "params": params,
                "scopes": scopes,
                "resource": oid.split(".")[0],
                "read": read,
                "media": media,
                "body": strip(body) if body else None,
                "answer_status": status,
                "answer": strip(answer) if answer else None,
                "secrets": {
                    "request": sorted(set(secret_pointers(body))) if body else [],
                    "answer": sorted(set(secret_pointers(answer))) if answer else [],
                },
            }
            if body:
                refs(body, needed)
            if answer:
                refs(answer, needed)
            operations.append(entry)

    # The overlay: ids kept from before the registry, secrets added or taken back.
    by_key = {(o["method"], o["path"]): o for o in operations}
    for fix in overlay["operations"]:
        o = by_key.get((fix["method"], fix["path"]))
        if o is None:
            sys.exit(f"overlay names {fix['method']} {fix['path']}, which the description does not have")
        if "id" in fix:
            o["id"] = fix["id"]
            o["resource"] = fix.get("resource", fix["id"].split(".")[0])
        for side in ("request", "answer"):
            add = fix.get("secrets", {}).get(side, [])
            drop = set(fix.get("not_secrets", {}).get(side, []))
            o["secrets"][side] = sorted((set(o["secrets"][side]) | set(add)) - drop)
        if "read" in fix:
            o["read"] = fix["read"]

    # Ids are unique. A DELETE of a collection beside the DELETE of its
    # items removes every matching item: `….delete_all`. Any other clash
    # stops the generation: the overlay must name one of them.
    seen = {}
    for o in operations:
        seen.setdefault(o["id"], []).append(o)
    for oid, clash in seen.items():
        if len(clash) < 2:
            continue
        collections = [o for o in clash if not is_param(o["path"].rstrip("/").split("/")[-1])]
        if len(clash) == 2 and len(collections) == 1 and oid.endswith(".delete"):
            collections[0]["id"] = oid + "_all"
        else:
            names = ", ".join(f"{o['method']} {o['path']}" for o in clash)
            sys.exit(f"{oid} names {names}: give one an id in {OVERLAY.name}")

    schemas = {name: strip(COMPONENTS[name]) for name in sorted(needed) if name in COMPONENTS}
    table = {
        "source": {
            "title": spec.get("info", {}).get("title"),
            "version": spec.get("info", {}).get("version"),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "generated": datetime.date.today().isoformat(),
            "operations": len(operations),
            "writes": sum(1 for o in operations if o["method"] != "GET"),
        },
        "operations": operations,
        "schemas": schemas,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(table, indent=None, separators=(",", ":"), sort_keys=False) + "\n")
    print(
        f"{out_path}: {len(operations)} operations ({table['source']['writes']} writes), "
        f"{len(schemas)} schemas",
        file=sys.stderr,
    )


COMPONENTS = {}

if __name__ == "__main__":
    main()
