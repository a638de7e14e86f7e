"""auth0-python against tollgate (`serve --sandbox`, HTTPS): what automation
does, end to end. Run by tests/clients/run.sh; exits non-zero on the first
expectation that does not hold.

    SSL_CERT_FILE=CA python check.py localhost:PORT
"""

import os
import re
import sys

from auth0.management import ManagementClient
from auth0.management.core.api_error import ApiError

domain = sys.argv[1]
ran = []


def step(name):
    def run(fn):
        fn()
        ran.append(name)
        print(f"auth0-python: ok  {name}", flush=True)
        return fn

    return run


def main():
    # Client-credentials login: the SDK fetches its token from /oauth/token,
    # through tollgate.
    client = ManagementClient(domain=domain, client_id="sandbox-client", client_secret="sandbox-secret")

    @step("client-credentials login and a paginated organization list (checkpoints)")
    def _():
        ids = [o.id for o in client.organizations.list(take=1)]
        assert "org_acme" in ids and "org_globex" in ids, ids

    @step("paginated enabled connections (offset pages with totals)")
    def _():
        items = list(client.organizations.enabled_connections.list("org_acme", per_page=1))
        assert any(c.connection_id == "con_saml" for c in items), items

    def round_trip(family, create, cid, update):
        """Creates an association on org_globex, updates it, deletes it."""
        api = getattr(client.organizations, family)
        created = getattr(api, create)("org_globex", connection_id=cid, assign_membership_on_login=True)
        assert created.connection_id == cid, created
        (field, value), = update.items()
        updated = api.update("org_globex", cid, **update)
        assert getattr(updated, field) is value, updated
        api.delete("org_globex", cid)

    step("create, update and delete through organizations/{id}/connections")(
        lambda: round_trip("connections", "create", "con_database", {"is_signup_enabled": True})
    )
    step("add, update and delete through organizations/{id}/enabled_connections")(
        lambda: round_trip("enabled_connections", "add", "con_google", {"show_as_button": True})
    )

    @step("organization create with enabled_connections")
    def _():
        name = f"python-{os.getpid()}"
        org = client.organizations.create(name=name, enabled_connections=[{"connection_id": "con_google"}])
        assert org.name == name, org
        conns = [c.connection_id for c in client.organizations.enabled_connections.list(org.id)]
        assert conns == ["con_google"], conns

    @step("a denial surfaces as an ApiError 403 with the rule's id and message")
    def _():
        try:
            client.organizations.connections.update("org_acme", "con_saml", organization_access_level="full")
        except ApiError as e:
            assert e.status_code == 403, e
            assert e.body["errorCode"] == "tollgate_policy_denied", e.body
            assert e.body["rules"][0]["id"] == "no-full-access", e.body
            assert "full" in e.body["rules"][0]["message"], e.body
            assert re.fullmatch(r"[0-9a-f-]{36}", e.body["audit_id"]), e.body
            print(f"auth0-python: denial audit_id {e.body['audit_id']}")
        else:
            raise AssertionError("the forbidden change was not refused")

    @step("a warn rule's Warning header, read through the raw response")
    def _():
        raw = client.organizations.connections.with_raw_response.update(
            "org_acme", "con_saml", show_as_button=False
        )
        assert raw.data.show_as_button is False, raw.data
        warning = raw.headers.get("warning", "")
        assert re.search(r'299 tollgate "prefer-buttons: ', warning), raw.headers
        client.organizations.connections.update("org_acme", "con_saml", show_as_button=True)

    print(f"auth0-python: all {len(ran)} checks passed")


try:
    main()
except Exception as e:  # noqa: BLE001: report what failed, then fail
    print(f"auth0-python: FAILED after {ran}: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)
