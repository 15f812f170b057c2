// Drive Debian's firefox-esr (never a downloaded browser) with puppeteer-core over WebDriver BiDi.
//
//   node tests/firefox.mjs JOB.json          one job, one JSON line out
//   node tests/firefox.mjs --interactive     JSON commands on stdin, one JSON answer line each
//
// JOB: { url, script?, arg?, waitForSelector?, waitMs?, result?, screenshot? }. Opens `url`, runs
// `script` (the source of an async function, called with `arg`), waits for `waitForSelector` and
// `waitMs`, evaluates the expression `result`, saves a screenshot if asked, and prints one JSON line:
// { result, messages } where messages are the page's console messages and the errors Firefox
// reports (its "Using five or more STUN/TURN servers" warning arrives as one of those).
//
// Interactive commands, for tests that act between two steps in the page (run a CLI, change the
// server): { op: "newPage" } -> { page }; { op: "goto", page, url }; { op: "evaluate", page, source,
// arg } (an expression, or a function called with arg) -> { result }; { op: "close", page };
// { op: "messages" } -> { messages }; { op: "quit" }. Every page shares one profile, as tabs do.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { createInterface } from "node:readline";

const require = createRequire(new URL("../.tools/package.json", import.meta.url));
const puppeteer = require("puppeteer-core");

const interactive = process.argv[2] === "--interactive";
const job = interactive ? null : JSON.parse(readFileSync(process.argv[2], "utf8"));
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

async function openPage() {
  const page = await browser.newPage();
  await page.setViewport({ width: 1100, height: 900 });
  page.on("console", (message) => messages.push(`${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => messages.push(`error: ${error.message || error}`));
  return page;
}

/** Evaluate `source` in the page: an expression, or a function (possibly async) called with `arg`. */
function evaluate(page, source, arg) {
  return page.evaluate(
    `(async () => { const value = (${source}); return typeof value === "function" ? await value(${JSON.stringify(arg ?? null)}) : await value; })()`,
  );
}

async function runJob() {
  const page = await openPage();
  await page.goto(job.url);
  if (job.script) await evaluate(page, job.script, job.arg);
  if (job.waitForSelector) await page.waitForSelector(job.waitForSelector, { timeout: 20000 });
  if (job.waitMs) await new Promise((resolve) => setTimeout(resolve, job.waitMs));
  const result = job.result ? await page.evaluate(job.result) : null;
  if (job.screenshot) await page.screenshot({ path: job.screenshot, fullPage: true });
  console.log(JSON.stringify({ result, messages }));
}

async function runInteractive() {
  const pages = [];
  for await (const line of createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    const command = JSON.parse(line);
    let answer;
    try {
      if (command.op === "quit") break;
      if (command.op === "newPage") answer = { page: pages.push(await openPage()) - 1 };
      else if (command.op === "goto") answer = { status: (await pages[command.page].goto(command.url)).status() };
      else if (command.op === "evaluate") answer = { result: (await evaluate(pages[command.page], command.source, command.arg)) ?? null };
      else if (command.op === "close") answer = { closed: await pages[command.page].close() };
      else if (command.op === "messages") answer = { messages };
      else answer = { error: `unknown op ${command.op}` };
    } catch (error) {
      answer = { error: String((error && error.message) || error) };
    }
    console.log(JSON.stringify(answer));
  }
}

try {
  await (interactive ? runInteractive() : runJob());
} finally {
  await browser.close();
}
