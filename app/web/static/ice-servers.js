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
const LEGACY_TTL_S = 120; // the legacy form tells no lifetime: ask again every minute
const MIN_REFRESH_MS = 1000; // never re-fetch faster than this, whatever the answer says
const REUSE_MS = 60000; // getIceServers() answers from memory at most this long: a revoked credential leaves within a minute
const FETCH_TIMEOUT_MS = 10000; // a hung request must not hold every later call
const MAX_KEYS = 16; // endpoint x Authorization slots kept (a token per user, or per fetch)

const cache = new Map(); // method + url + authorization -> { entry, pending }
let generation = 0; // bumped by forgetIceServers(): a fetch started before never lands after it

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

/** The Authorization header of the options a fetch is made with: answers for two users (or tokens) are never confused. */
function authorizationOf(fetchOptions) {
  return new Headers((fetchOptions && fetchOptions.headers) || {}).get("Authorization") || "";
}

/** An entry that lives `ttlMs` from `sent`: re-fetched at half its life, reused at most REUSE_MS. */
function entryOf(iceServers, source, sent, ttlMs) {
  const refreshAfter = Math.max(MIN_REFRESH_MS, ttlMs / 2);
  return { iceServers, source, sent, ttlMs, refreshAfter, reuseFor: Math.min(refreshAfter, REUSE_MS) };
}

async function fetchEntry(url, method, extra) {
  const timeout = typeof AbortSignal !== "undefined" && AbortSignal.timeout ? { signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) } : {};
  const sent = mark(); // before the request: the credential's life is counted from here, so errs early
  const response = await fetch(url, { method, credentials: "same-origin", ...timeout, ...extra, cache: "no-store" });
  if (!response.ok) throw new Error(`${url} answered ${response.status}`);
  const body = await response.json();
  const ttl = Number.isFinite(body.ttl) ? body.ttl : LEGACY_TTL_S;
  return entryOf(toList(body.iceServers), body.source, sent, ttl * 1000);
}

/**
 * Return ICE servers for `new RTCPeerConnection({ iceServers })`. An answer is reused from memory
 * for at most a minute and half its life, per endpoint and Authorization header (`fetchOptions`,
 * when a function, is called each time: it says who asks). On error: the last good servers while
 * they are valid, else `fallback` (public STUN).
 */
export async function getIceServers({ url = DEFAULT_URL, method = "GET", fallback = DEFAULT_FALLBACK, fetchOptions = {} } = {}) {
  return (await getEntry({ url, method, fallback, fetchOptions }, "reuseFor")).iceServers;
}

/** Forget every answer held in memory, and any fetch under way: call it when the user signs out. */
export function forgetIceServers() {
  generation += 1;
  cache.clear();
}

/** Return the entry of `options`, from memory while younger than its `freshFor` field ("reuseFor" or "refreshAfter"). */
async function getEntry({ url = DEFAULT_URL, method = "GET", fallback = DEFAULT_FALLBACK, fetchOptions = {} } = {}, freshFor) {
  const started = generation;
  // fetchOptions may be a function, so each fetch can carry a fresh access token (and names whose answer it is).
  const extra = (typeof fetchOptions === "function" ? await fetchOptions() : fetchOptions) || {};
  const key = `${method} ${url} ${authorizationOf(extra)}`;
  const slot = cache.get(key);
  if (slot && slot.entry && elapsedSince(slot.entry.sent) < slot.entry[freshFor]) return slot.entry;
  if (slot && slot.pending) return slot.pending;
  const previous = slot && slot.entry;
  const next = { entry: previous, pending: null };
  next.pending = fetchEntry(url, method, extra)
    .catch((error) => {
      const lastGood = previous && previous.ttlMs && elapsedSince(previous.sent) < previous.ttlMs ? previous : null;
      console.warn(`ice-servers: ${error.message}; using ${lastGood ? "the last good servers" : "the fallback"}`);
      // Ask again soon: the last good servers for what is left of their life, else the fallback.
      const retry = { refreshAfter: RETRY_AFTER_ERROR_MS, reuseFor: RETRY_AFTER_ERROR_MS, sent: mark() };
      if (!lastGood) return { ...entryOf(fallback, "fallback", retry.sent, 0), ...retry };
      const left = lastGood.ttlMs - elapsedSince(lastGood.sent);
      return { ...lastGood, ...retry, ttlMs: left, reuseFor: Math.min(RETRY_AFTER_ERROR_MS, left) };
    })
    .then((entry) => {
      if (generation === started && cache.get(key) === next) next.entry = entry;
      next.pending = null;
      return entry;
    });
  if (generation === started) {
    cache.delete(key);
    cache.set(key, next);
    while (cache.size > MAX_KEYS) cache.delete(cache.keys().next().value);
  }
  return next.pending;
}

/**
 * Keep `peerConnection` on valid ICE servers: at half the credential's remaining life, ask the
 * service again; when it hands out new servers, apply them with setConfiguration(), then
 * restartIce() so the live connection allocates with the new credential (your app's
 * negotiationneeded handler renegotiates, as for any ICE restart). The service replaces its
 * credential well before the old one expires, so halving the time left always finds the new one
 * with a large share of the old one's life to spare, wherever in the service's window the call began.
 * A failed fetch keeps the call on what it has (never on the fallback) and asks again soon; a page
 * coming back from the background or a suspended laptop looks again at once.
 * Returns a function that stops it; it also stops when the connection closes.
 * Options: the same as getIceServers, plus `restartIce` (default true) and `onUpdate(iceServers)`.
 */
export function keepFresh(peerConnection, { restartIce = true, onUpdate, ...options } = {}) {
  let timer = null;
  let stopped = false;
  let last = null; // the entry the next look is scheduled from
  let current = fingerprint(peerConnection.getConfiguration().iceServers);
  const hasDocument = typeof document !== "undefined" && document.addEventListener;

  const schedule = () => {
    if (stopped) return;
    clearTimeout(timer);
    const due = last ? last.refreshAfter - elapsedSince(last.sent) : RETRY_AFTER_ERROR_MS;
    timer = setTimeout(tick, Math.max(MIN_REFRESH_MS, due));
  };
  // Timers fire late after a suspend or in a background tab: look again when the page comes back.
  const onVisible = () => document.visibilityState === "visible" && schedule();
  const onState = () => peerConnection.connectionState === "closed" && stop();

  function stop() {
    stopped = true;
    clearTimeout(timer);
    if (hasDocument) document.removeEventListener("visibilitychange", onVisible);
    if (typeof window !== "undefined" && window.removeEventListener) window.removeEventListener("online", schedule);
    if (peerConnection.removeEventListener) peerConnection.removeEventListener("connectionstatechange", onState);
  }

  async function look(swap) {
    if (stopped) return;
    if (peerConnection.connectionState === "closed") return stop();
    try {
      const entry = await getEntry(options, "refreshAfter");
      last = entry;
      const next = fingerprint(entry.iceServers);
      // Never move a live call onto the fallback: STUN alone cannot carry what the relay did.
      if (swap && entry.source !== "fallback" && next !== current && !stopped && peerConnection.connectionState !== "closed") {
        current = next;
        peerConnection.setConfiguration({ ...peerConnection.getConfiguration(), iceServers: entry.iceServers });
        if (restartIce) peerConnection.restartIce();
        if (onUpdate) onUpdate(entry.iceServers);
      }
    } catch (error) {
      console.warn(`ice-servers: keepFresh: ${(error && error.message) || error}`);
      if (!last || last.refreshAfter - elapsedSince(last.sent) < MIN_REFRESH_MS) last = { ...(last || {}), refreshAfter: RETRY_AFTER_ERROR_MS, sent: mark() };
    } finally {
      schedule();
    }
  }
  const tick = () => look(true);

  if (hasDocument) document.addEventListener("visibilitychange", onVisible);
  if (typeof window !== "undefined" && window.addEventListener) window.addEventListener("online", schedule);
  if (peerConnection.addEventListener) peerConnection.addEventListener("connectionstatechange", onState);
  look(false); // the servers the connection was made with: schedule from them, swap nothing yet
  return stop;
}
