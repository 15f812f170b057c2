// ice-servers client: get ICE servers from the service and keep live calls on a valid TURN credential.
// An ES module with no dependencies and no build step:
//
//   import { getIceServers, keepFresh } from "/static/ice-servers.js";
//   const pc = new RTCPeerConnection({ iceServers: await getIceServers() });
//   const stop = keepFresh(pc);   // swaps in new credentials before the current ones expire
//
// It also reads the single-object answer of POST /api/turn-credentials:
//   getIceServers({ url: "/api/turn-credentials", method: "POST" }).
//
// Caching: a credential is a secret that changes (refreshed, revoked, one per user), so the HTTP
// cache never holds one: every fetch is `cache: "no-store"` (the service answers `no-store` too).
// The module keeps an answer in memory only, for at most REUSE_MS and half its life, and schedules
// from the answer's `ttl` counted from the moment the request was sent, never from `expiresAt` and
// the page's clock.

const DEFAULT_URL = "/api/ice-servers";
const DEFAULT_FALLBACK = [{ urls: ["stun:stun.cloudflare.com:3478"] }];
const RETRY_AFTER_ERROR_MS = 5000; // a failed fetch is retried this soon
const LEGACY_TTL_S = 600; // an answer without ttl (the legacy form) is trusted this long
const MIN_REFRESH_MS = 1000; // never re-fetch faster than this, whatever the answer says
const REUSE_MS = 60000; // getIceServers() answers from memory at most this long: a revoked credential leaves within a minute

const cache = new Map(); // method + url + authorization -> entry

/** A moment to measure elapsed time from: the monotonic clock and the wall clock together. */
function mark() {
  return { monotonic: performance.now(), wall: Date.now() };
}

/**
 * Milliseconds since `since`, erring early: the larger of the monotonic clock (immune to the page's
 * clock being set wrong or jumping back) and the wall clock (which also counts a suspended laptop).
 */
function elapsedSince(since) {
  return Math.max(performance.now() - since.monotonic, Date.now() - since.wall);
}

/** Normalize an answer's iceServers (a list, or the legacy single object) to a list. */
function toList(iceServers) {
  if (Array.isArray(iceServers)) return iceServers;
  if (iceServers && typeof iceServers === "object") return [iceServers];
  throw new Error("the answer has no iceServers");
}

/** What identifies a set of ICE servers, whatever the key order or the browser's normalization. */
function fingerprint(iceServers) {
  return JSON.stringify(
    (iceServers || []).map((server) => [[].concat(server.urls).sort(), server.username || "", server.credential || ""]),
  );
}

/** The Authorization header of fixed fetch options: answers for two users (or tokens) are never confused. */
function authorizationOf(fetchOptions) {
  if (!fetchOptions || typeof fetchOptions !== "object") return "";
  const headers = new Headers(fetchOptions.headers || {});
  return headers.get("Authorization") || "";
}

function keyOf({ url = DEFAULT_URL, method = "GET", fetchOptions = {} }) {
  return `${method} ${url} ${authorizationOf(fetchOptions)}`;
}

/** An entry that lives `ttlMs` from `sent`: re-fetched at half its life, reused at most REUSE_MS. */
function entryOf(iceServers, source, sent, ttlMs) {
  const refreshAfter = Math.max(MIN_REFRESH_MS, ttlMs / 2);
  return { iceServers, source, sent, ttlMs, refreshAfter, reuseFor: Math.min(refreshAfter, REUSE_MS) };
}

async function fetchEntry({ url, method, fetchOptions }) {
  // fetchOptions may be a function, so each re-fetch can carry a fresh access token.
  const extra = typeof fetchOptions === "function" ? await fetchOptions() : fetchOptions;
  const sent = mark(); // before the request: the credential's life is counted from here, so errs early
  const response = await fetch(url, { method, credentials: "same-origin", ...extra, cache: "no-store" });
  if (!response.ok) throw new Error(`${url} answered ${response.status}`);
  const body = await response.json();
  const ttl = Number.isFinite(body.ttl) ? body.ttl : LEGACY_TTL_S;
  return entryOf(toList(body.iceServers), body.source, sent, ttl * 1000);
}

/**
 * Return ICE servers for `new RTCPeerConnection({ iceServers })`. An answer is reused from memory
 * for at most a minute and half its life. On error: the last good servers while they are valid,
 * else `fallback` (public STUN).
 */
export async function getIceServers({ url = DEFAULT_URL, method = "GET", fallback = DEFAULT_FALLBACK, fetchOptions = {} } = {}) {
  return (await getEntry({ url, method, fallback, fetchOptions }, "reuseFor")).iceServers;
}

/** Forget every answer held in memory: call it when the user signs out. */
export function forgetIceServers() {
  cache.clear();
}

/** Return the entry of `options`, from memory while younger than its `freshFor` field ("reuseFor" or "refreshAfter"). */
async function getEntry({ url = DEFAULT_URL, method = "GET", fallback = DEFAULT_FALLBACK, fetchOptions = {} } = {}, freshFor) {
  const key = keyOf({ url, method, fetchOptions });
  const cached = cache.get(key);
  if (cached && cached.pending) return cached.pending;
  if (cached && elapsedSince(cached.sent) < cached[freshFor]) return cached;
  const pending = fetchEntry({ url, method, fetchOptions })
    .then((entry) => {
      cache.set(key, entry);
      return entry;
    })
    .catch((error) => {
      const lastGood = cached && cached.ttlMs && elapsedSince(cached.sent) < cached.ttlMs ? cached : null;
      // Ask again soon: the last good servers for what is left of their life, else the fallback.
      const entry = lastGood
        ? { ...lastGood, refreshAfter: elapsedSince(lastGood.sent) + RETRY_AFTER_ERROR_MS, reuseFor: elapsedSince(lastGood.sent) + RETRY_AFTER_ERROR_MS }
        : { ...entryOf(fallback, "fallback", mark(), 0), refreshAfter: RETRY_AFTER_ERROR_MS, reuseFor: RETRY_AFTER_ERROR_MS };
      console.warn(`ice-servers: ${error.message}; using ${lastGood ? "the last good servers" : "the fallback"}`);
      cache.set(key, entry);
      return entry;
    });
  cache.set(key, { ...(cached || {}), pending });
  return pending;
}

/**
 * Keep `peerConnection` on valid ICE servers: at half the credential's remaining life, ask the
 * service again; when it hands out new servers, apply them with setConfiguration(), then
 * restartIce() so the live connection allocates with the new credential (your app's
 * negotiationneeded handler renegotiates, as for any ICE restart). The service replaces its
 * credential well before the old one expires, so halving the time left always finds the new one
 * with a large share of the old one's life to spare, wherever in the service's window the call began.
 * Returns a function that stops it; it also stops when the connection closes.
 * Options: the same as getIceServers, plus `restartIce` (default true) and `onUpdate(iceServers)`.
 */
export function keepFresh(peerConnection, { restartIce = true, onUpdate, ...options } = {}) {
  let timer = null;
  let stopped = false;
  let current = fingerprint(peerConnection.getConfiguration().iceServers);

  const stop = () => {
    stopped = true;
    clearTimeout(timer);
  };

  const schedule = (entry) => {
    if (stopped) return;
    timer = setTimeout(tick, Math.max(MIN_REFRESH_MS, entry.refreshAfter - elapsedSince(entry.sent)));
  };

  async function tick() {
    if (stopped) return;
    if (peerConnection.connectionState === "closed") return stop();
    const entry = await getEntry(options, "refreshAfter");
    const next = fingerprint(entry.iceServers);
    if (next !== current && !stopped && peerConnection.connectionState !== "closed") {
      current = next;
      peerConnection.setConfiguration({ ...peerConnection.getConfiguration(), iceServers: entry.iceServers });
      if (restartIce) peerConnection.restartIce();
      if (onUpdate) onUpdate(entry.iceServers);
    }
    schedule(entry);
  }

  getEntry(options, "refreshAfter").then(schedule);
  return stop;
}
