// Opens page.html in headless Chromium (Debian's) for each broker URL given, waits until
// MQTT.js has subscribed, publishes with midge-pub, and waits until the page shows the
// message. Exits non-zero, saying what the page showed, on any failure; every wait has
// a deadline.
//
//   node run.mjs MIDGE_PUB PUB_PORT SPKI_HASH URL...
//
// SPKI_HASH: the base64 SHA-256 of the broker certificate's public key, which Chromium is
// told to accept (the test CA is not in its trust store); nothing else is exempted.
import puppeteer from "puppeteer-core";
import { execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [midgePub, pubPort, spki, ...urls] = process.argv.slice(2);
const DEADLINE_MS = 15000;
const page_url = new URL("page.html", import.meta.url);

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  userDataDir: mkdtempSync(join(tmpdir(), "midge-chromium-")),
  args: ["--no-sandbox", `--ignore-certificate-errors-spki-list=${spki}`],
});
let failed = false;
try {
  for (const url of urls) {
    const page = await browser.newPage();
    const target = new URL(page_url);
    target.searchParams.set("url", url);
    await page.goto(target.href);
    const state = () => page.$eval("#state", (e) => e.textContent);
    try {
      await page.waitForFunction(
        () => document.getElementById("state").textContent === "subscribed",
        { timeout: DEADLINE_MS },
      );
    } catch {
      console.log(`FAIL ${url}: never subscribed (page shows "${await state()}")`);
      failed = true;
      continue;
    }
    const text = `hello over ${new URL(url).protocol.replace(":", "")}`;
    execFileSync(midgePub, ["-p", pubPort, "-t", "browser/test", "-q", "1", "-m", text]);
    try {
      await page.waitForFunction(
        (want) => [...document.querySelectorAll("#messages li")].some((li) => li.textContent === want),
        { timeout: DEADLINE_MS },
        `browser/test ${text}`,
      );
      console.log(`PASS ${url}: the page received "${text}"`);
    } catch {
      const got = await page.$$eval("#messages li", (items) => items.map((li) => li.textContent));
      console.log(`FAIL ${url}: the page shows ${JSON.stringify(got)} (state "${await state()}")`);
      failed = true;
    }
    await page.close();
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
