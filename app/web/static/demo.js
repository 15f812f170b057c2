// The /demo page: which of the served STUN/TURN URLs works from this browser's network, and why the others do not.
//
// Each URL is tried in a peer connection of its own (TURN URLs relay-only), so every candidate and
// every icecandidateerror belongs to that URL in any browser. The report is JSON to copy into a bug.
const GATHER_TIMEOUT_MS = 10000;
const $ = (id) => document.getElementById(id);

function transportOf(url) {
  if (/^stuns?:/i.test(url)) return "stun";
  if (/^turns:/i.test(url)) return "tls";
  return /[?&]transport=tcp/i.test(url) ? "tcp" : "udp";
}

/** Try one URL; resolve with whether it produced the candidate it should, how fast, and the browser's error. */
function probe(server, url) {
  const transport = transportOf(url);
  const expected = transport === "stun" ? "srflx" : "relay";
  const result = { url, transport, ok: false, candidate: null, ms: null, error: null };
  const pc = new RTCPeerConnection({
    iceServers: [{ ...server, urls: [url] }],
    iceTransportPolicy: transport === "stun" ? "all" : "relay",
  });
  const started = performance.now();
  return new Promise((resolve) => {
    let done = false;
    const finish = (why) => {
      if (done) return;
      done = true;
      pc.close();
      if (!result.ok && !result.error) result.error = { code: null, text: why };
      resolve(result);
    };
    pc.onicecandidate = ({ candidate }) => {
      if (candidate && candidate.candidate && candidate.type === expected) {
        Object.assign(result, { ok: true, candidate: candidate.type, ms: Math.round(performance.now() - started) });
        finish();
      }
    };
    pc.onicecandidateerror = (event) => {
      result.error = { code: event.errorCode, text: event.errorText || "" };
    };
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && finish(`gathering ended without a ${expected} candidate`);
    setTimeout(() => finish(`no ${expected} candidate within ${GATHER_TIMEOUT_MS / 1000} s, and no error from the browser`), GATHER_TIMEOUT_MS);
    pc.createDataChannel("probe");
    pc.createOffer()
      .then((offer) => pc.setLocalDescription(offer))
      .catch((error) => {
        result.error = { code: 0, text: error.message };
        finish();
      });
  });
}

function row(result) {
  const tr = $("urls").insertRow();
  tr.dataset.ok = String(result.ok);
  tr.dataset.candidate = result.candidate || "";
  const cells = [
    result.url,
    result.transport,
    result.ok ? result.candidate : "none",
    result.ms === null ? "" : `${result.ms} ms`,
    result.error ? `${result.error.code ?? ""} ${result.error.text}`.trim() : "",
  ];
  for (const text of cells) tr.insertCell().textContent = text;
  tr.cells[2].className = result.ok ? "good" : "bad";
}

/** The credential's time left: its ttl counted from when the request was sent, on the monotonic clock (never the page's). */
function showLife(ttl, sentAt) {
  const left = Math.max(0, Math.round(ttl - (performance.now() - sentAt) / 1000));
  $("life").textContent = `${left} s (until ${new Date(Date.now() + left * 1000).toISOString().replace(/\.\d+Z$/, "Z")})`;
}

async function run() {
  const sentAt = performance.now();
  const response = await fetch("/api/ice-servers", { cache: "no-store" });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok || !Array.isArray(answer.iceServers)) {
    // 401 or 403 in token or jwt mode (this page sends no token), 429, or something that is not the service.
    const why = answer.error ? `${answer.error} (${response.status})` : `it answered ${response.status}`;
    const hints = {
      401: ": with ICE_ACCESS_MODE token or jwt this page, which sends no token, cannot ask it",
      403: ": in origin mode, add this page's origin to CORS_ORIGINS",
    };
    const hint = hints[response.status] || "";
    throw new Error(`${why}${hint}`);
  }
  const urls = answer.iceServers.flatMap((server) => [].concat(server.urls).map((url) => [server, url]));
  const turn = urls.filter(([server, url]) => /^turns?:/i.test(url) && server.username);
  $("source").textContent = answer.source;
  $("count").textContent = `${urls.length}${urls.length >= 5 ? " (five or more slow down ICE gathering)" : ""}`;
  if (turn.length && answer.source === "static") {
    $("life").textContent = "unknown: static TURN_SERVERS (the service does not know their credential's life)";
  } else if (turn.length) {
    showLife(answer.ttl, sentAt);
    setInterval(() => showLife(answer.ttl, sentAt), 1000);
  } else {
    $("life").textContent = "no credential: the service handed out no TURN server";
  }

  const results = await Promise.all(urls.map(([server, url]) => probe(server, url)));
  results.forEach(row);
  const relays = results.filter((result) => result.ok && result.candidate === "relay");
  const state = relays.length ? "relay" : turn.length ? "no-relay" : "no-turn";
  $("verdict").className = state === "relay" ? "relay" : "no-relay";
  $("verdict").textContent = {
    relay: `TURN works from here: ${relays.length} of ${turn.length} TURN URLs gave a relay candidate.`,
    "no-relay": "No relay candidate: TURN does not work from this browser's network (see the errors below).",
    "no-turn": `The service handed out no TURN server (source: ${answer.source}), so there is no relay to try: see its log, and \`flask --app wsgi ice-status\`.`,
  }[state];
  // URLs and outcomes only: the credential stays out of the report.
  const report = {
    generatedAt: new Date().toISOString(),
    userAgent: navigator.userAgent,
    source: answer.source,
    urlCount: urls.length,
    ttl: answer.ttl,
    expiresAt: answer.expiresAt,
    verdict: state,
    urls: results,
  };
  $("report").value = JSON.stringify(report, null, 2);
  document.body.dataset.verdict = state;
}

$("copy").addEventListener("click", async () => {
  $("report").select();
  try {
    await navigator.clipboard.writeText($("report").value);
    $("copy").textContent = "Copied";
  } catch {
    document.execCommand("copy");
  }
});

run().catch((error) => {
  $("verdict").className = "no-relay";
  $("verdict").textContent = `Could not ask the service: ${error.message}`;
  document.body.dataset.verdict = "no-relay";
});
