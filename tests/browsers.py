"""What the browser tests share: the in-page scripts, and Firefox driven through tests/firefox.mjs."""

from __future__ import annotations

import json
import select
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tests.servers import ROOT, TURN_SECRET, app_env

ARTIFACTS = ROOT / "test-artifacts"
FIREFOX = "/usr/bin/firefox-esr"
CHROMIUM = "/usr/bin/chromium"
# Headless, and nothing that reaches for the network outside loopback.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Two peers in one page (offerer, answerer), relay only, negotiated in-page on every negotiationneeded.
RELAY_PAIR = """
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
"""

# Two peers in one page, relay only, negotiated in-page; keepFresh on both. The offerer restarts ICE
# after each swap (its negotiationneeded handler renegotiates), so both sides allocate anew.
KEEP_FRESH_PAGE = (
    """
async () => {
  const { getIceServers, keepFresh } = await import("/static/ice-servers.js");
  // Real time, whatever the page does to Date (a test may set the page's clock wrong).
  const now = () => Math.round(performance.timeOrigin + performance.now());
  const log = (window.iceLog = { swaps: [], received: [], closed: false });
  const setConfiguration = RTCPeerConnection.prototype.setConfiguration;
  RTCPeerConnection.prototype.setConfiguration = function (config) {
    const before = this.getConfiguration().iceServers.find((s) => s.username);
    const after = config.iceServers.find((s) => s.username);
    log.swaps.push({ at: now(), from: before && before.username, to: after && after.username });
    return setConfiguration.call(this, config);
  };
"""
    + RELAY_PAIR
    + """  answerer.ondatachannel = ({ channel }) => {
    channel.onmessage = ({ data }) => log.received.push({ at: now(), data });
  };
  const channel = offerer.createDataChannel("chat");
  channel.onclose = () => (log.closed = true);
  let sent = 0;
  setInterval(() => channel.readyState === "open" && channel.send(`message ${++sent}`), 200);
  window.channel = channel;
  keepFresh(offerer);
  keepFresh(answerer, { restartIce: false });
  await new Promise((resolve) => (channel.onopen = resolve));
  log.openedAt = now();
  log.firstUsername = config.iceServers.find((s) => s.username).username;
}
"""
)

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


class FirefoxPage:
    """A tab of a FirefoxProfile, with the part of Playwright's Page the tests use: goto, evaluate, close."""

    def __init__(self, profile: FirefoxProfile, index: int):
        self._profile, self._index = profile, index

    def goto(self, url: str) -> None:
        self._profile.command("goto", page=self._index, url=url)

    def evaluate(self, source: str, arg=None):
        """Evaluate an expression, or call a function's source with ``arg``, as Playwright's evaluate does."""
        return self._profile.command("evaluate", page=self._index, source=source, arg=arg)["result"]

    def close(self) -> None:
        self._profile.command("close", page=self._index)


class FirefoxProfile:
    """Debian's Firefox ESR, one profile, driven step by step through tests/firefox.mjs --interactive."""

    def __init__(self, timeout: float = 60):
        self._timeout = timeout
        self._process = subprocess.Popen(
            ["node", str(ROOT / "tests" / "firefox.mjs"), "--interactive"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )

    def command(self, op: str, **fields) -> dict:
        """Send one command; return its answer, or raise with Firefox's error."""
        self._process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self._process.stdin.flush()
        ready, _, _ = select.select([self._process.stdout], [], [], self._timeout)
        line = self._process.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(
                f"firefox.mjs gave no answer to {op}: {self._process.stderr.read() if self._process.poll() is not None else ''}"
            )
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"firefox.mjs {op}: {answer['error']}")
        return answer

    def new_page(self) -> FirefoxPage:
        return FirefoxPage(self, self.command("newPage")["page"])

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self._process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self._process.stdin.close()
                self._process.wait(20)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait(5)


@contextmanager
def browser_profile(name: str):
    """Yield a fresh profile of Debian's Chromium (Playwright) or Firefox ESR (puppeteer): ``new_page()`` opens a tab in it."""
    if name == "firefox":
        profile = FirefoxProfile()
        try:
            yield profile
        finally:
            profile.close()
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium.new_context()
        finally:
            chromium.close()
