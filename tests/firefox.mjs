// Drive Debian's firefox-esr (never a downloaded browser) with puppeteer-core over WebDriver BiDi.
//
//   node tests/firefox.mjs JOB.json
//
// JOB: { url, script?, arg?, waitForSelector?, waitMs?, result?, screenshot? }. Opens `url`, runs
// `script` (the source of an async function, called with `arg`), waits for `waitForSelector` and
// `waitMs`, evaluates the expression `result`, saves a screenshot if asked, and prints one JSON line:
// { result, messages } where messages are the page's console messages and the errors Firefox
// reports (its "Using five or more STUN/TURN servers" warning arrives as one of those).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(new URL("../.tools/package.json", import.meta.url));
const puppeteer = require("puppeteer-core");

const job = JSON.parse(readFileSync(process.argv[2], "utf8"));
const browser = await puppeteer.launch({
  browser: "firefox",
  executablePath: "/usr/bin/firefox-esr",
  headless: true,
  extraPrefsFirefox: {
    "media.peerconnection.ice.loopback": true, // the test's TURN server and peers live on 127.0.0.1
    "media.peerconnection.ice.obfuscate_host_addresses": false,
    "media.navigator.permission.disabled": true,
    "network.connectivity-service.enabled": false, // nothing outside loopback
    "network.captive-portal-service.enabled": false,
    "browser.safebrowsing.update.enabled": false,
  },
});
const messages = [];
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1100, height: 900 });
  page.on("console", (message) => messages.push(`${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => messages.push(`error: ${error.message || error}`));
  await page.goto(job.url);
  if (job.script) await page.evaluate(`(${job.script})(${JSON.stringify(job.arg ?? null)})`);
  if (job.waitForSelector) await page.waitForSelector(job.waitForSelector, { timeout: 20000 });
  if (job.waitMs) await new Promise((resolve) => setTimeout(resolve, job.waitMs));
  const result = job.result ? await page.evaluate(job.result) : null;
  if (job.screenshot) await page.screenshot({ path: job.screenshot, fullPage: true });
  console.log(JSON.stringify({ result, messages }));
} finally {
  await browser.close();
}
