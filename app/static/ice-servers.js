// ice-servers client: get ICE servers from the service and keep live calls on a valid TURN credential.
// An ES module with no dependencies and no build step:
//
//   import { getIceServers, keepFresh } from "/static/ice-servers.js";
//   const pc = new RTCPeerConnection({ iceServers: await getIceServers() });
//   const stop = keepFresh(pc);   // swaps in new credentials before the current ones expire
//
// It also reads the single-object answer of POST /api/turn-credentials:
//   getIceServers({ url: "/api/turn-credentials", method: "POST" }).

const DEFAULT_URL = "/api/ice-servers";
const DEFAULT_FALLBACK = [{ urls: ["stun:stun.cloudflare.com:3478"] }];
const RETRY_AFTER_ERROR_MS = 5000; // a failed fetch is retried this soon
const LEGACY_TTL_S = 600; // an answer without ttl (the legacy form) is trusted this long
const MIN_REFRESH_MS = 1000; // never re-fetch faster than this, whatever the answer says

const cache = new Map(); // url + method -> { iceServers, refreshAt, expiresAt, pending }

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

/** Seconds an answer stays valid: its ttl, else Cache-Control max-age, else a default. */
function ttlOf(body, response) {
  if (Number.isFinite(body.ttl)) return body.ttl;
  const maxAge = /max-age=(\d+)/.exec(response.headers.get("Cache-Control") || "");
  return maxAge ? Number(maxAge[1]) : LEGACY_TTL_S;
}

async function fetchEntry({ url, method, fetchOptions }) {
  // fetchOptions may be a function, so each re-fetch can carry a fresh access token.
  const extra = typeof fetchOptions === "function" ? await fetchOptions() : fetchOptions;
  const fetchedAt = Date.now();
  const response = await fetch(url, { method, credentials: "same-origin", ...extra });
  if (!response.ok) throw new Error(`${url} answered ${response.status}`);
  const body = await response.json();
  const ttl = ttlOf(body, response);
  return {
    iceServers: toList(body.iceServers),
    source: body.source,
    expiresAt: fetchedAt + ttl * 1000,
    // Half the remaining validity: the service hands out a new credential before the old one ends,
    // and a client asking at half-life always finds it before expiry.
    refreshAt: fetchedAt + Math.max(MIN_REFRESH_MS, (ttl * 1000) / 2),
  };
}

/**
 * Return ICE servers for `new RTCPeerConnection({ iceServers })`, cached until their refresh point.
 * On error: the last good servers while they are valid, else `fallback` (public STUN).
 */
export async function getIceServers({ url = DEFAULT_URL, method = "GET", fallback = DEFAULT_FALLBACK, fetchOptions = {} } = {}) {
  return (await getEntry({ url, method, fallback, fetchOptions })).iceServers;
}

async function getEntry({ url = DEFAULT_URL, method = "GET", fallback = DEFAULT_FALLBACK, fetchOptions = {} } = {}) {
  const key = `${method} ${url}`;
  const cached = cache.get(key);
  const now = Date.now();
  if (cached && now < cached.refreshAt) return cached;
  if (cached && cached.pending) return cached.pending;
  const pending = fetchEntry({ url, method, fetchOptions })
    .then((entry) => {
      cache.set(key, entry);
      return entry;
    })
    .catch((error) => {
      const lastGood = cached && Date.now() < cached.expiresAt ? cached : null;
      const entry = lastGood
        ? { ...lastGood, refreshAt: Date.now() + RETRY_AFTER_ERROR_MS }
        : { iceServers: fallback, source: "fallback", expiresAt: 0, refreshAt: Date.now() + RETRY_AFTER_ERROR_MS };
      console.warn(`ice-servers: ${error.message}; using ${lastGood ? "the last good servers" : "the fallback"}`);
      cache.set(key, entry);
      return entry;
    });
  cache.set(key, { ...(cached || { refreshAt: 0, expiresAt: 0 }), pending });
  return pending;
}

/**
 * Keep `peerConnection` on valid ICE servers: before they expire, fetch new ones and apply them
 * with setConfiguration(), then restartIce() so the live connection allocates with the new
 * credential (your app's negotiationneeded handler renegotiates, as for any ICE restart).
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
    timer = setTimeout(tick, Math.max(MIN_REFRESH_MS, entry.refreshAt - Date.now()));
  };

  async function tick() {
    if (stopped) return;
    if (peerConnection.connectionState === "closed") return stop();
    const entry = await getEntry(options);
    const next = fingerprint(entry.iceServers);
    if (next !== current && !stopped && peerConnection.connectionState !== "closed") {
      current = next;
      peerConnection.setConfiguration({ ...peerConnection.getConfiguration(), iceServers: entry.iceServers });
      if (restartIce) peerConnection.restartIce();
      if (onUpdate) onUpdate(entry.iceServers);
    }
    schedule(entry);
  }

  getEntry(options).then(schedule);
  return stop;
}
