// Types for ice-servers.js, the browser client. Beside the module, so TypeScript picks them up for
//   import { getIceServers, keepFresh } from "./ice-servers.js";

/** An ICE server as the service answers it; assignable to RTCIceServer. */
export interface IceServer {
  urls: string | string[];
  username?: string;
  credential?: string;
}

/** Options for fetch(), or a function (possibly async) returning them, called before every fetch: a fresh access token each time. */
export type FetchOptions = RequestInit | (() => RequestInit | Promise<RequestInit>);

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
 * is reused from memory for at most a minute and half its life, per endpoint and Authorization header.
 */
export function getIceServers(options?: GetIceServersOptions): Promise<IceServer[]>;

/** Forget every answer held in memory: call it when the user signs out. */
export function forgetIceServers(): void;

/** Keep `peerConnection` on valid ICE servers, asking again at half the credential's remaining life; returns the function that stops it. */
export function keepFresh(peerConnection: RTCPeerConnection, options?: KeepFreshOptions): () => void;
