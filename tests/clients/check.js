// node-auth0 against tollgate (`serve --sandbox`, HTTPS): what automation
// does, end to end. Run by tests/clients/run.sh; exits non-zero on the
// first expectation that does not hold.
//
//   NODE_EXTRA_CA_CERTS=CA node check.js localhost:PORT
const assert = require("node:assert/strict");
const { ManagementClient, ManagementError } = require("auth0");

const domain = process.argv[2];
const ran = [];
async function step(name, fn) {
  await fn();
  ran.push(name);
  console.log(`node-auth0: ok  ${name}`);
}

async function all(page) {
  const items = [];
  for await (const item of page) items.push(item);
  return items;
}

async function main() {
  // Client-credentials login: the SDK fetches its token (form-encoded)
  // from /oauth/token, through tollgate.
  const client = new ManagementClient({ domain, clientId: "sandbox-client", clientSecret: "sandbox-secret" });

  await step("client-credentials login and a paginated organization list (checkpoints)", async () => {
    const orgs = await all(await client.organizations.list({ take: 1 }));
    const ids = orgs.map((o) => o.id);
    assert.ok(ids.includes("org_acme") && ids.includes("org_globex"), `organizations: ${ids}`);
  });

  await step("paginated enabled connections (offset pages with totals)", async () => {
    const page = await client.organizations.enabledConnections.list("org_acme", { per_page: 1 });
    const items = await all(page);
    assert.ok(items.some((c) => c.connection_id === "con_saml"), JSON.stringify(items));
  });

  await step("create, update and delete through organizations/{id}/connections", async () => {
    const created = await client.organizations.connections.create("org_globex", {
      connection_id: "con_database",
      assign_membership_on_login: true,
    });
    assert.equal(created.connection_id, "con_database");
    const updated = await client.organizations.connections.update("org_globex", "con_database", {
      is_signup_enabled: true,
    });
    assert.equal(updated.is_signup_enabled, true);
    await client.organizations.connections.delete("org_globex", "con_database");
  });

  await step("add, update and delete through organizations/{id}/enabled_connections", async () => {
    const added = await client.organizations.enabledConnections.add("org_globex", {
      connection_id: "con_google",
      assign_membership_on_login: false,
    });
    assert.equal(added.connection_id, "con_google");
    const updated = await client.organizations.enabledConnections.update("org_globex", "con_google", {
      show_as_button: true,
    });
    assert.equal(updated.show_as_button, true);
    await client.organizations.enabledConnections.delete("org_globex", "con_google");
  });

  await step("organization create with enabled_connections", async () => {
    const name = `node-${process.pid}`;
    const org = await client.organizations.create({
      name,
      enabled_connections: [{ connection_id: "con_google" }],
    });
    assert.equal(org.name, name);
    const conns = await all(await client.organizations.enabledConnections.list(org.id));
    assert.deepEqual(conns.map((c) => c.connection_id), ["con_google"]);
  });

  await step("a denial surfaces as ForbiddenError with the rule's id and message", async () => {
    await assert.rejects(
      client.organizations.connections.update("org_acme", "con_saml", { organization_access_level: "full" }),
      (e) => {
        assert.ok(e instanceof ManagementError, `${e}`);
        assert.equal(e.statusCode, 403);
        assert.equal(e.body.errorCode, "tollgate_policy_denied");
        assert.equal(e.body.rules[0].id, "no-full-access");
        assert.match(e.body.rules[0].message, /full/);
        assert.match(e.body.audit_id, /^[0-9a-f-]{36}$/);
        console.log(`node-auth0: denial audit_id ${e.body.audit_id}`);
        return true;
      },
    );
  });

  await step("a warn rule's Warning header, read through the raw response", async () => {
    const { data, rawResponse } = await client.organizations.connections
      .update("org_acme", "con_saml", { show_as_button: false })
      .withRawResponse();
    assert.equal(data.show_as_button, false);
    const warning = rawResponse.headers.get("warning") || "";
    assert.match(warning, /299 tollgate "prefer-buttons: /);
    await client.organizations.connections.update("org_acme", "con_saml", { show_as_button: true });
  });
  console.log(`node-auth0: all ${ran.length} checks passed`);
}

main().catch((e) => {
  console.error(`node-auth0: FAILED after [${ran.join("; ")}]:`, e);
  process.exit(1);
});
