// One governed PATCH through node-auth0; prints the outcome and how long it took.
const { ManagementClient } = require("auth0");
const client = new ManagementClient({ domain: process.argv[2], token: "drill-token" });
const started = Date.now();
client.organizations.connections
  .update("org_acme", "con_saml", { show_as_button: false })
  .then(() => console.log(`node-auth0: ok after ${Date.now() - started} ms`))
  .catch((e) => console.log(`node-auth0: ${e.constructor.name} ${e.statusCode} after ${Date.now() - started} ms`));
