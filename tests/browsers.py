"""What the browser tests share: the in-page scripts, and Firefox driven through tests/firefox.mjs."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from tests.servers import ROOT, TURN_SECRET, app_env

ARTIFACTS = ROOT / "test-artifacts"
FIREFOX = "/usr/bin/firefox-esr"

# Two peers in one page, relay only, negotiated in-page; keepFresh on both. The offerer restarts ICE
# after each swap (its negotiationneeded handler renegotiates), so both sides allocate anew.
KEEP_FRESH_PAGE = """
async () => {
  const { getIceServers, keepFresh } = await import("/static/ice-servers.js");
  const log = (window.iceLog = { swaps: [], received: [], closed: false });
  const setConfiguration = RTCPeerConnection.prototype.setConfiguration;
  RTCPeerConnection.prototype.setConfiguration = function (config) {
    const before = this.getConfiguration().iceServers.find((s) => s.username);
    const after = config.iceServers.find((s) => s.username);
    log.swaps.push({ at: Date.now(), from: before && before.username, to: after && after.username });
    return setConfiguration.call(this, config);
  };
  const config = { iceServers: await getIceServers(), iceTransportPolicy: "relay" };
  const offerer = new RTCPeerConnection(config);
  const answerer = new RTCPeerConnection(config);
  offerer.onicecandidate = ({ candidate }) => candidate && answerer.addIceCandidate(candidate);
  answerer.onicecandidate = ({ candidate }) => candidate && offerer.addIceCandidate(candidate);
  offerer.onnegotiationneeded = async () => {
    await offerer.setLocalDescription();
    await answerer.setRemoteDescription(offerer.localDescription);
    await answerer.setLocalDescription();
    await offerer.setRemoteDescription(answerer.localDescription);
  };
  answerer.ondatachannel = ({ channel }) => {
    channel.onmessage = ({ data }) => log.received.push({ at: Date.now(), data });
  };
  const channel = offerer.createDataChannel("chat");
  channel.onclose = () => (log.closed = true);
  let sent = 0;
  setInterval(() => channel.readyState === "open" && channel.send(`message ${++sent}`), 200);
  window.channel = channel;
  keepFresh(offerer);
  keepFresh(answerer, { restartIce: false });
  await new Promise((resolve) => (channel.onopen = resolve));
  log.openedAt = Date.now();
  log.firstUsername = config.iceServers.find((s) => s.username).username;
}
"""

# The default answer in a peer connection: how many URLs it has (the browser warns at five).
ANSWER_IN_A_PEER_CONNECTION = """
async () => {
  const answer = await (await fetch("/api/ice-servers")).json();
  const pc = new RTCPeerConnection({ iceServers: answer.iceServers });
  pc.createDataChannel("probe");
  await pc.setLocalDescription(await pc.createOffer());
  window.urlCount = answer.iceServers.reduce((count, server) => count + [].concat(server.urls).length, 0);
}
"""


def run_firefox(url: str, timeout: float = 120, **job) -> dict:
    """Run one job in Debian's Firefox ESR; return {result, messages}."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump({"url": url, **job}, handle)
    try:
        completed = subprocess.run(
            ["node", str(ROOT / "tests" / "firefox.mjs"), handle.name], capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )
    finally:
        Path(handle.name).unlink()
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"firefox.mjs failed ({completed.returncode}): {completed.stderr[-2000:]}")
    return json.loads(lines[-1])


def turn_host(start_host, coturn, redis_url, **settings):
    """Start the app with the turn-secret provider in front of ``coturn``."""
    env = app_env(None, redis_url, TURN_SHARED_SECRET=TURN_SECRET, TURN_URLS=coturn.turn_url, **settings)
    return start_host(env)
