// The reviewers' page in headless Chromium, as a reviewer uses it: log in,
// filter, open an exchange, check that a planted <script> renders as text,
// look at the chains and the scan; a screenshot of each page.
//
//   node check.js http://127.0.0.1:ADMIN_PORT REVIEWER_TOKEN EXCHANGE_ID SCREENSHOT_DIR
const assert = require("node:assert/strict");
const path = require("node:path");
const puppeteer = require("puppeteer-core");

const [base, token, exchange, shots] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

async function main() {
  const browser = await puppeteer.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1400, height: 900 });
    // Scripts the page does not have must not run: an alert would fail.
    page.on("dialog", async (d) => {
      await d.dismiss();
      throw new Error(`a dialog opened: ${d.message()}`);
    });
    const shot = (name) => page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });

    await page.goto(`${base}/ui/`);
    assert.match(page.url(), /\/ui\/login$/, "sent to the login form");
    await page.type("input[name=token]", "not-the-token");
    await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
    assert.match(await page.content(), /not the reviewer token/);
    await page.type("input[name=token]", token);
    await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
    assert.match(page.url(), /\/ui\/$/);
    const cookies = await page.cookies();
    const session = cookies.find((c) => c.name === "tollgate_review");
    assert.ok(session && session.httpOnly && session.sameSite === "Strict", JSON.stringify(cookies));
    assert.equal(await page.evaluate(() => document.cookie), "", "the session is not readable by scripts");
    await shot("1-exchanges");
    console.log("ui: ok  log in (HttpOnly, SameSite=Strict cookie)");

    // Filter: the denials of the last hour.
    await page.select("select[name=decision]", "deny");
    await Promise.all([page.waitForNavigation(), page.click("form.filters button[type=submit]")]);
    const rows = await page.$$eval("table tr td:nth-child(7)", (tds) => tds.map((t) => t.textContent));
    assert.ok(rows.length > 0 && rows.every((d) => d === "deny"), `decisions: ${rows}`);
    await shot("2-denials");
    console.log(`ui: ok  filter (${rows.length} denial(s))`);

    // The exchange with the planted name: shown as text.
    await page.goto(`${base}/ui/exchanges/${exchange}`);
    const text = await page.$eval("main", (m) => m.innerText);
    assert.ok(text.includes("<script>alert(1)</script>"), "the planted value is shown as text");
    assert.equal(await page.$$eval("script", (s) => s.length), 0, "no script element on the page");
    assert.ok((await page.$$("tr.changed")).length > 0, "the changed field is marked");
    await shot("3-exchange");
    console.log("ui: ok  an exchange: verdicts, before/after, escaping");

    await page.goto(`${base}/ui/chains`);
    assert.match(await page.$eval("main", (m) => m.innerText), /chains valid/);
    await shot("4-chains");
    await page.goto(`${base}/ui/scan`);
    await shot("5-scan");
    console.log("ui: ok  chains and scan pages");

    const csv = await (await fetch(`${base}/ui/export.csv?since=1h`, {
      headers: { cookie: `tollgate_review=${session.value}` },
    })).text();
    assert.match(csv, /^exchange_id,/);
    console.log("ui: ok  CSV of the filter");
    console.log("ui: all checks passed");
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error("ui: FAILED:", e);
  process.exit(1);
});
