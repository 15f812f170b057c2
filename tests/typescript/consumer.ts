// A strict TypeScript frontend using the client: this must compile with tsc --strict.
import { forgetIceServers, getIceServers, keepFresh, type IceServer, type KeepFreshOptions } from "./ice-servers.js";

async function call(token: () => Promise<string>): Promise<RTCPeerConnection> {
  const iceServers: IceServer[] = await getIceServers({ fetchOptions: async () => ({ headers: { Authorization: `Bearer ${await token()}` } }) });
  // A fresh token each fetch, and whose answer it is: the last good servers survive the new token.
  const mine: IceServer[] = await getIceServers({ fetchOptions: async () => ({ headers: { Authorization: `Bearer ${await token()}` }, cacheKey: "user-1" }) });
  const pc = new RTCPeerConnection({ iceServers });
  const legacy: RTCIceServer[] = await getIceServers({ url: "/api/turn-credentials", method: "POST", fallback: [{ urls: "stun:stun.example.org:3478" }] });
  const options: KeepFreshOptions = {
    url: "/api/ice-servers",
    restartIce: false,
    fetchOptions: { credentials: "include" },
    onUpdate: (servers) => console.log(servers.length, legacy.length, mine.length),
  };
  const stop: () => void = keepFresh(pc, options);
  stop();
  const signedOut: void = forgetIceServers();
  return signedOut === undefined ? pc : pc;
}

export { call };
