// A consumer passing a wrong option type: tsc --strict must refuse this file.
import { keepFresh } from "./ice-servers.js";

keepFresh(new RTCPeerConnection(), { restartIce: "yes" });
