// The /demo page: fetch ICE servers, gather candidates, and say whether TURN hands out a relay.
const GATHER_TIMEOUT_MS = 10000;
const $ = (id) => document.getElementById(id);

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
}

function verdict(state, text) {
  $("verdict").className = state;
  $("verdict").textContent = text;
  document.body.dataset.verdict = state;
}

async function run() {
  const response = await fetch("/api/ice-servers");
  const answer = await response.json();
  $("source").textContent = answer.source;
  const expires = new Date(answer.expiresAt);
  $("expires").textContent = `${answer.expiresAt} (${expires.toLocaleString()}, in ${answer.ttl} s)`;
  // URLs and usernames only: the credential itself stays off the screen.
  $("servers").textContent = answer.iceServers.map((s) => [].concat(s.urls).join(", ")).join(" | ");

  const seen = new Set();
  const pc = new RTCPeerConnection({ iceServers: answer.iceServers });
  pc.createDataChannel("demo");
  pc.onicecandidate = ({ candidate, url }) => {
    if (!candidate || !candidate.candidate) return;
    seen.add(candidate.type);
    const row = $("candidates").insertRow();
    row.dataset.type = candidate.type;
    cell(row, candidate.type, `type-${candidate.type}`);
    cell(row, candidate.protocol);
    cell(row, `${candidate.address}:${candidate.port}`);
    cell(row, candidate.url || url || "");
  };
  pc.onicecandidateerror = (event) => {
    const item = document.createElement("li");
    item.textContent = `${event.url}: ${event.errorCode} ${event.errorText}`;
    $("errors").append(item);
  };
  const done = () => {
    if (document.body.dataset.verdict) return;
    if (seen.has("relay")) verdict("relay", `TURN works: a relay candidate was gathered (source: ${answer.source}).`);
    else verdict("no-relay", `No relay candidate: TURN does not work from this browser (source: ${answer.source}).`);
    pc.close();
  };
  pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && done();
  setTimeout(done, GATHER_TIMEOUT_MS);
  await pc.setLocalDescription(await pc.createOffer());
}

run().catch((error) => verdict("no-relay", `Could not ask the service: ${error.message}`));
