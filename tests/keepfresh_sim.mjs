// keepFresh against a model of the service, in virtual time: wherever in the window a call starts,
// and whatever the page's clock does, how long before the old credential expires does it move?
//
//   node tests/keepfresh_sim.mjs '{"credentialTtl": 86400, "cacheTtl": 82800, "step": 97, "clock": "back"}'
//
// The model is the service's documented behaviour: a credential lives credentialTtl from its issue;
// from the last quarter of its cache window (at most its last 600 s) a request starts a background
// refresh, whose credential every worker serves within LOCAL_STALENESS (2 s); past the window a
// request refills at once. Only this call's requests reach it (a quiet service, or a per-user
// credential): the worst case, since other callers would only make the refresh come sooner.
// `clock`: "right", "ahead" / "behind" (the page's Date off by an hour), "back" / "forward" (Date
// jumps an hour mid-call). The answers carry a true expiresAt, so a client that trusted it with the
// page's clock would fail the offsets. Every run must last to its end (two credentials and an hour)
// and swap at least twice. Prints one JSON line: the runs, the smallest lead, fetches per credential.

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const options = JSON.parse(process.argv[2] || "{}");
const CREDENTIAL_TTL = options.credentialTtl ?? 86400;
const CACHE_TTL = options.cacheTtl ?? 82800;
const STEP = options.step ?? 97;
const CLOCK = options.clock ?? "right";
const LOCAL_STALENESS = 2;
const CALL_LENGTH = 2 * CREDENTIAL_TTL + 3600;
// SIM_MODULE: another copy of the module to sweep (a negative control: an older or a broken one).
const SOURCE = readFileSync(process.env.SIM_MODULE || new URL("../app/web/static/ice-servers.js", import.meta.url), "utf8");
// The module as an .mjs file of its own, imported with a new query each run: a fresh instance (its cache is module-wide)
// under a short key. A data: URL of the whole source did the same, but Node's module map hashed it on every import.
const MODULE_DIR = mkdtempSync(join(tmpdir(), "keepfresh-sim-"));
const MODULE = pathToFileURL(join(MODULE_DIR, "ice-servers.mjs")).href;
writeFileSync(new URL(MODULE), SOURCE);
process.on("exit", () => rmSync(MODULE_DIR, { recursive: true, force: true }));

const EPOCH = 1_800_000_000 - 1_000_000; // real time = EPOCH + virtual seconds
let now = 0; // virtual seconds
let dateOffset = 0; // what the page's Date adds to real time, in ms
const timers = [];
let timerIds = 0;
globalThis.performance = { now: () => now * 1000 };
Date.now = () => (EPOCH + now) * 1000 + dateOffset;
globalThis.setTimeout = (callback, delay) => {
  const timer = { id: ++timerIds, at: now + Math.max(0, delay) / 1000, callback };
  timers.push(timer);
  return timer.id;
};
globalThis.clearTimeout = (id) => {
  const index = timers.findIndex((timer) => timer.id === id);
  if (index >= 0) timers.splice(index, 1);
};
console.warn = () => {};

/** The service: one credential at a time, refreshed as documented. */
class Service {
  constructor(issuedAt) {
    this.serial = 0;
    this.issue(issuedAt);
    this.next = null; // a refreshed credential, served from next.visibleAt
    this.fetches = 0;
  }
  issue(at) {
    this.current = { username: `user-${++this.serial}`, issuedAt: at, expiresAt: at + CREDENTIAL_TTL, refreshAt: at + CACHE_TTL };
  }
  answer() {
    this.fetches += 1;
    // Past the window every worker re-reads the shared cache, where the refresh already is.
    if (this.next && (now >= this.next.visibleAt || now >= this.current.refreshAt)) {
      this.current = this.next.credential;
      this.next = null;
    }
    const credential = this.current;
    if (now >= credential.refreshAt) {
      this.issue(now);
    } else if (!this.next && now >= credential.refreshAt - Math.min((CACHE_TTL * 0.25), 600)) {
      this.next = { credential: { username: `user-${++this.serial}`, issuedAt: now, expiresAt: now + CREDENTIAL_TTL, refreshAt: now + CACHE_TTL }, visibleAt: now + LOCAL_STALENESS };
    }
    const served = this.current;
    const expiresAt = new Date((EPOCH + served.expiresAt) * 1000).toISOString().replace(/\.\d+Z$/, "Z");
    const iceServers = [{ urls: ["turn:turn.example.test:3478"], username: served.username, credential: "x" }];
    return { iceServers, ttl: Math.floor(served.expiresAt - now), expiresAt, source: "model" };
  }
}

async function flush() {
  for (let i = 0; i < 20; i++) await Promise.resolve();
}

async function run(arrival, index) {
  now = 1_000_000;
  dateOffset = CLOCK === "ahead" ? 3600e3 : CLOCK === "behind" ? -3600e3 : 0;
  timers.length = 0;
  const service = new Service(now - arrival);
  const expiries = new Map(); // username -> expiresAt
  globalThis.fetch = async () => {
    const body = service.answer();
    expiries.set(body.iceServers[0].username, service.current.expiresAt);
    return { ok: true, status: 200, json: async () => body };
  };
  const { getIceServers, keepFresh } = await import(`${MODULE}?run=${index}`);
  let configuration = { iceServers: await getIceServers() };
  const swaps = [];
  const peer = {
    connectionState: "connected",
    getConfiguration: () => configuration,
    setConfiguration: (next) => {
      const from = configuration.iceServers[0].username;
      swaps.push({ at: now, from, lead: expiries.get(from) - now });
      configuration = next;
    },
    restartIce: () => {},
  };
  keepFresh(peer);
  await flush();
  const end = now + CALL_LENGTH;
  const jumpAt = now + ((arrival * 7919) % CREDENTIAL_TTL); // somewhere in the call
  let jumped = false;
  while (timers.length && now < end) {
    timers.sort((a, b) => a.at - b.at);
    const timer = timers.shift();
    if ((CLOCK === "back" || CLOCK === "forward") && !jumped && timer.at >= jumpAt) {
      jumped = true;
      dateOffset += CLOCK === "back" ? -3600e3 : 3600e3;
    }
    now = timer.at;
    timer.callback();
    await flush();
  }
  const reachedEnd = now >= end; // timers kept coming for the whole call: keepFresh never stopped by itself
  now = Math.max(now, end);
  const credentials = new Set(swaps.map((swap) => swap.from)).size;
  return { swaps, fetches: service.fetches, credentials, reachedEnd, finalLead: expiries.get(configuration.iceServers[0].username) - now };
}

let minLead = Infinity;
let worstArrival = null;
let late = 0;
let runs = 0;
let maxFetchesPerCredential = 0;
let broken = 0; // runs that stopped early or swapped fewer than twice
for (let arrival = 0, index = 0; arrival < CACHE_TTL; arrival += STEP, index++) {
  const result = await run(arrival, index);
  runs += 1;
  for (const swap of result.swaps) {
    if (swap.lead <= 0) late += 1;
    if (swap.lead < minLead) {
      minLead = swap.lead;
      worstArrival = arrival;
    }
  }
  if (result.finalLead <= 0) late += 1; // still on an expired credential at the end
  if (!result.reachedEnd || result.swaps.length < 2) broken += 1;
  maxFetchesPerCredential = Math.max(maxFetchesPerCredential, result.fetches / Math.max(1, result.credentials));
}
console.log(JSON.stringify({ runs, minLead, worstArrival, late, broken, maxFetchesPerCredential }));
