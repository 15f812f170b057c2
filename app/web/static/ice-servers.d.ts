// Types for ice-servers.js, the browser client. Beside the module, so TypeScript picks them up for
//   import { getIceServers, keepFresh } from "./ice-servers.js";

/** An ICE server as the service answers it; assignable to RTCIceServer. */
export interface IceServer {
  urls: string | string[];
  username?: string;
  credential?: string;
}

/**
 * Options for fetch(), and `cacheKey`: whose answer it is (say, the signed-in user's id). Answers are held in memory
 * per endpoint and cacheKey, or the Authorization header without one: with a fresh token per fetch, a cacheKey keeps
 * the last good servers across fetches. A non-empty string naming the user (else a TypeError); never sent.
 */
export type IceFetchInit = RequestInit & { cacheKey?: string };

/** The options for fetch(), or a function (possibly async) returning them, called before every fetch: a fresh access token each time. */
export type FetchOptions = IceFetchInit | (() => IceFetchInit | Promise<IceFetchInit>);

export interface GetIceServersOptions {
  /** The service's endpoint. Default "/api/ice-servers"; "/api/turn-credentials" with method "POST" reads the single-object form. */
  url?: string;
  /** Default "GET". */
  method?: "GET" | "POST";
  /** Served when the service cannot be asked and nothing valid is cached. Default: Cloudflare's public STUN. */
  fallback?: IceServer[];
  fetchOptions?: FetchOptions;
}

export interface KeepFreshOptions extends GetIceServersOptions {
  /** Restart ICE after swapping in new servers, so a live connection allocates with the new credential. Default true. */
  restartIce?: boolean;
  /** Called with the new servers after each swap. */
  onUpdate?: (iceServers: IceServer[]) => void;
}

/**
 * ICE servers for `new RTCPeerConnection({ iceServers })`. Fetched with `cache: "no-store"`; an answer
 * is reused from memory for at most a minute and half its life, per endpoint and `cacheKey` (else
 * Authorization header). On a failure: the last good servers while valid, else `fallback`. After a 429
 * or 503 with Retry-After (exposed to allowed origins), no request goes out to that service (its origin) until it has
 * passed.
 */
export function getIceServers(options?: GetIceServersOptions): Promise<IceServer[]>;

/** Forget every answer held in memory: call it when the user signs out. */
export function forgetIceServers(): void;

/**
 * Keep `peerConnection` on valid ICE servers, asking again at half the credential's remaining life (or once a
 * refusal's Retry-After has passed). Never moves a connection that relays onto servers without TURN while its
 * credential is valid (a life it did not hand out: 48 h at most), nor onto `fallback`. Stops when the connection closes
 * (`pc.close()` included: it wraps that connection's close()) or when the returned function is called. Give it the
 * `url` and `fetchOptions` the connection's servers came from.
 */
export function keepFresh(peerConnection: RTCPeerConnection, options?: KeepFreshOptions): () => void;
