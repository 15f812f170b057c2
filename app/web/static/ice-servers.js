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
// the page's clock. A refusal's Retry-After (429, 503) is waited out: no request goes out before it.
// keepFresh never moves a call that relays onto servers without TURN while its credential is valid.

const DEFAULT_URL = "/api/ice-servers";
const DEFAULT_FALLBACK = [{ urls: ["stun:stun.cloudflare.com:3478"] }];
const RETRY_AFTER_ERROR_MS = 5000; // a failed fetch is retried this soon
const LEGACY_TTL_S = 120; // the legacy form tells no lifetime: ask again every minute
const MIN_REFRESH_MS = 1000; // never re-fetch faster than this, whatever the answer says
const REUSE_MS = 60000; // getIceServers() answers from memory at most this long: a revoked credential leaves within a minute
const FETCH_TIMEOUT_MS = 10000; // a hung request must not hold every later call
const MAX_KEYS = 16; // endpoint x Authorization (or cacheKey) slots kept: one per user
const MAX_RETRY_AFTER_MS = 3600000; // a Retry-After longer than an hour is taken as an hour
const MAX_UNKNOWN_LIFE_MS = 172800000; // servers of unknown life (not handed out by this module) count as valid this long: 48 h, the longest TTL
const MAX_HANDED_OUT = 64; // answers remembered by their servers, so keepFresh knows how long a connection's credential lives

const cache = new Map(); // method + url + authorization -> { entry, pending }
const holds = new Map(); // service origin -> { sent, waitMs }: a refusal's Retry-After holds every request to that service
const handedOut = new Map(); // fingerprint of servers -> the entry they came in (its sent, ttlMs, lifeKnown)
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

/** Whether `iceServers` hold a TURN server with its credential: what a relayed call needs. */
function hasTurn(iceServers) {
  return (iceServers || []).some(
    (server) => server.username && server.credential && [].concat(server.urls).some((url) => /^turns?:/i.test(url)),
  );
}

/** The service an endpoint belongs to: its origin (a Retry-After holds every endpoint and user of it). */
function serviceOf(url) {
  try {
    return new URL(url, typeof location !== "undefined" ? location.href : "http://localhost/").origin;
  } catch {
    return String(url);
  }
}

/** Milliseconds left of a refusal's Retry-After for `service`, or 0. */
function heldFor(service) {
  const hold = holds.get(service);
  if (!hold) return 0;
  const left = hold.waitMs - elapsedSince(hold.sent);
  if (left > 0) return left;
  holds.delete(service);
  return 0;
}

/** Milliseconds a refusal asks to wait (Retry-After on a 429 or 503: seconds, or an HTTP date), or 0. */
function retryAfterMs(response) {
  if (response.status !== 429 && response.status !== 503) return 0;
  const value = (response.headers.get("Retry-After") || "").trim();
  if (!value) return 0;
  const wait = /^\d+$/.test(value) ? Number(value) * 1000 : Date.parse(value) - Date.now();
  return Number.isFinite(wait) ? Math.min(Math.max(0, wait), MAX_RETRY_AFTER_MS) : 0;
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
  if (!response.ok) {
    const error = new Error(`${url} answered ${response.status}`);
    error.retryAfterMs = retryAfterMs(response);
    throw error;
  }
  const body = await response.json();
  const lifeKnown = Number.isFinite(body.ttl); // the legacy single-object form tells none
  const entry = entryOf(toList(body.iceServers), body.source, sent, (lifeKnown ? body.ttl : LEGACY_TTL_S) * 1000);
  return { ...entry, lifeKnown };
}

/**
 * Return ICE servers for `new RTCPeerConnection({ iceServers })`. An answer is reused from memory
 * for at most a minute and half its life, per endpoint and whose answer it is: `fetchOptions.cacheKey`
 * when given (say, the signed-in user's id: a fresh token per fetch then keeps its last good servers),
 * else the Authorization header. `fetchOptions`, when a function, is called each time. On error: the
 * last good servers while they are valid, else `fallback` (public STUN); after a 429 or 503 with
 * Retry-After, no request goes out until it has passed.
 */
export async function getIceServers({ url = DEFAULT_URL, method = "GET", fallback = DEFAULT_FALLBACK, fetchOptions = {} } = {}) {
  return (await getEntry({ url, method, fallback, fetchOptions }, "reuseFor")).iceServers;
}

/** Forget every answer held in memory, and any fetch under way: call it when the user signs out (a Retry-After still holds). */
export function forgetIceServers() {
  generation += 1;
  cache.clear();
  handedOut.clear();
}

/** Return the entry of `options`, from memory while younger than its `freshFor` field ("reuseFor" or "refreshAfter"). */
async function getEntry({ url = DEFAULT_URL, method = "GET", fallback = DEFAULT_FALLBACK, fetchOptions = {} } = {}, freshFor) {
  const started = generation;
  // fetchOptions may be a function, so each fetch can carry a fresh access token (and names whose answer it is).
  const { cacheKey, ...extra } = (typeof fetchOptions === "function" ? await fetchOptions() : fetchOptions) || {};
  if (cacheKey !== undefined && (typeof cacheKey !== "string" || !cacheKey)) {
    // null, a number or an object would merge users' answers ("key:null", "[object Object]"): refuse it.
    throw new TypeError("ice-servers: fetchOptions.cacheKey must be a non-empty string naming whose answer it is (the user)");
  }
  const key = `${method} ${url} ${cacheKey === undefined ? authorizationOf(extra) : `key:${cacheKey}`}`;
  const slot = cache.get(key);
  if (slot && slot.entry && elapsedSince(slot.entry.sent) < slot.entry[freshFor]) return usable(slot.entry, fallback);
  if (slot && slot.pending) return slot.pending;
  const previous = slot && slot.entry;
  const service = serviceOf(url);
  const held = heldFor(service);
  if (held > 0) return heldEntry(previous, fallback, held); // the service said when to ask again: no request before
  const next = { entry: previous, pending: null };
  next.pending = fetchEntry(url, method, extra)
    .catch((error) => {
      if (error.retryAfterMs) holds.set(service, { sent: mark(), waitMs: error.retryAfterMs }); // for every key of it
      console.warn(`ice-servers: ${error.message}; using ${validEntry(previous) ? "the last good servers" : "the fallback"}`);
      // Ask again soon, or once the refusal's Retry-After has passed: meanwhile the last good servers for what is
      // left of their life, then the fallback (usable() swaps it in), never another request.
      return heldEntry(previous, fallback, Math.max(RETRY_AFTER_ERROR_MS, error.retryAfterMs || 0));
    })
    .then((entry) => {
      if (generation === started && cache.get(key) === next) next.entry = entry;
      if (entry.source !== "fallback" && generation === started) remember(entry);
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

/** Whether `entry` holds servers whose credential is still valid. */
function validEntry(entry) {
  return Boolean(entry && entry.ttlMs && entry.source !== "fallback" && elapsedSince(entry.sent) < entry.ttlMs);
}

/** What to answer for `wait` ms without asking: the last good servers for what is left of their life, then `fallback`. */
function heldEntry(previous, fallback, wait) {
  const retry = { refreshAfter: wait, reuseFor: wait, sent: mark() };
  if (!validEntry(previous)) return { ...entryOf(fallback, "fallback", retry.sent, 0), ...retry };
  const left = previous.ttlMs - elapsedSince(previous.sent);
  return { ...previous, ...retry, ttlMs: left, fallback };
}

/** Remember an answer by its servers: keepFresh then knows how long a connection built from it stays valid. */
function remember(entry) {
  const key = fingerprint(entry.iceServers);
  handedOut.delete(key);
  handedOut.set(key, entry);
  while (handedOut.size > MAX_HANDED_OUT) handedOut.delete(handedOut.keys().next().value);
}

/** An entry held after a failure outlives its servers' credential when the wait is long: then the fallback it carries. */
function usable(entry, fallback) {
  if (!entry.fallback || elapsedSince(entry.sent) < entry.ttlMs) return entry;
  return { ...entryOf(entry.fallback || fallback, "fallback", entry.sent, 0), refreshAfter: entry.refreshAfter, reuseFor: entry.reuseFor };
}

/**
 * Keep `peerConnection` on valid ICE servers: at half the credential's remaining life, ask the
 * service again; when it hands out new servers, apply them with setConfiguration(), then
 * restartIce() so the live connection allocates with the new credential (your app's
 * negotiationneeded handler renegotiates, as for any ICE restart). The service replaces its
 * credential well before the old one expires, so halving the time left always finds the new one
 * with a large share of the old one's life to spare, wherever in the service's window the call began.
 * A failed fetch keeps the call on what it has (never on the fallback) and asks again soon, or once
 * a refusal's Retry-After has passed. A connection that relays is never moved onto servers without
 * TURN (the service's STUN-only answer past a spend ceiling or in an outage) while its credential is
 * valid: STUN alone cannot carry what the relay did. A page coming back from the background or a
 * suspended laptop looks again at once.
 * Returns a function that stops it; it also stops when the connection closes (close() included,
 * which fires no event: keepFresh wraps the connection's close() until it stops).
 * Options: the same as getIceServers, plus `restartIce` (default true) and `onUpdate(iceServers)`.
 */
export function keepFresh(peerConnection, { restartIce = true, onUpdate, ...options } = {}) {
  let timer = null;
  let stopped = false;
  let last = null; // the entry the next look is scheduled from
  let current = fingerprint(peerConnection.getConfiguration().iceServers);
  // The entry whose servers the connection has, if this module handed them out: how long its TURN credential lives.
  let applied = handedOut.get(current) || null;
  const startedAt = mark(); // servers of unknown life count as valid MAX_UNKNOWN_LIFE_MS from here
  const hasDocument = typeof document !== "undefined" && document.addEventListener;
  const closed = () => peerConnection.signalingState === "closed" || peerConnection.connectionState === "closed";
  // close() fires no event: wrap it on this connection (an own property, removed again when keepFresh stops).
  const originalClose = peerConnection.close;
  const closeAndStop = function close(...args) {
    stop();
    return originalClose.apply(this, args);
  };
  if (typeof originalClose === "function") peerConnection.close = closeAndStop;

  const schedule = () => {
    if (stopped) return;
    clearTimeout(timer);
    let due = last ? last.refreshAfter - elapsedSince(last.sent) : RETRY_AFTER_ERROR_MS;
    // Kept on TURN through an answer without it: look again when that credential expires, not later.
    if (applied && applied.lifeKnown !== false && last && !hasTurn(last.iceServers) && hasTurn(peerConnection.getConfiguration().iceServers)) {
      due = Math.min(due, applied.ttlMs - elapsedSince(applied.sent) + MIN_REFRESH_MS);
    }
    timer = setTimeout(tick, Math.max(MIN_REFRESH_MS, due));
  };
  // Timers fire late after a suspend or in a background tab: look again when the page comes back.
  const onVisible = () => document.visibilityState === "visible" && schedule();
  const onState = () => peerConnection.connectionState === "closed" && stop();

  function stop() {
    stopped = true;
    clearTimeout(timer);
    if (peerConnection.close === closeAndStop) delete peerConnection.close;
    if (hasDocument) document.removeEventListener("visibilitychange", onVisible);
    if (typeof window !== "undefined" && window.removeEventListener) window.removeEventListener("online", schedule);
    if (peerConnection.removeEventListener) peerConnection.removeEventListener("connectionstatechange", onState);
  }

  /** Whether the connection's servers hold a TURN credential still valid (a life this module never learned: 48 h at most). */
  function relaysOnValidTurn() {
    if (!hasTurn(peerConnection.getConfiguration().iceServers)) return false;
    if (!applied) return elapsedSince(startedAt) < MAX_UNKNOWN_LIFE_MS;
    return elapsedSince(applied.sent) < (applied.lifeKnown === false ? MAX_UNKNOWN_LIFE_MS : applied.ttlMs);
  }

  async function look(swap) {
    if (stopped) return;
    if (closed()) return stop();
    try {
      const entry = await getEntry(options, "refreshAfter");
      last = entry;
      const next = fingerprint(entry.iceServers);
      if (next === current) applied = entry;
      // Never move a live call onto the fallback, nor off TURN while its credential lasts: STUN alone cannot carry
      // what the relay did.
      const keepTurn = !hasTurn(entry.iceServers) && relaysOnValidTurn();
      if (swap && entry.source !== "fallback" && !keepTurn && next !== current && !stopped && !closed()) {
        current = next;
        applied = entry;
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
