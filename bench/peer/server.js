// The peer for `make bench`: what the second guide's users run today. Express, Node's cluster module
// with PEER_WORKERS processes, and in each an in-process cache of the answer: the credential is
// asked of Cloudflare's API (here the stand-in) once, then served until it nears its expiry.
"use strict";
const cluster = require("node:cluster");
const express = require("express");

const workers = Number(process.env.PEER_WORKERS || 2);
const port = Number(process.env.PEER_PORT || 8001);
const api = process.env.CLOUDFLARE_API_BASE; // ends in /v1, as the app takes it
const keyId = process.env.CLOUDFLARE_TURN_TOKEN_ID;
const token = process.env.CLOUDFLARE_API_TOKEN;
const ttl = 86400;

if (cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
  let online = 0;
  cluster.on("listening", () => {
    if (++online === workers) console.log(`peer ready: ${workers} workers on 127.0.0.1:${port}`);
  });
  process.on("SIGTERM", () => {
    for (const worker of Object.values(cluster.workers)) worker.kill();
    process.exit(0);
  });
} else {
  let body = null;
  let expires = 0;
  let pending = null;

  async function fetchAnswer() {
    const response = await fetch(`${api}/turn/keys/${keyId}/credentials/generate-ice-servers`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify({ ttl }),
    });
    if (!response.ok) throw new Error(`Cloudflare answered ${response.status}`);
    const { iceServers } = await response.json();
    body = JSON.stringify({ iceServers, ttl });
    expires = Date.now() + (ttl - 3600) * 1000;
  }

  const app = express();
  app.disable("x-powered-by");
  app.disable("etag");
  app.get("/api/ice-servers", async (req, res) => {
    try {
      if (body === null || Date.now() >= expires) {
        pending = pending || fetchAnswer().finally(() => (pending = null));
        await pending;
      }
      res.set("Cache-Control", "private, max-age=82800").type("application/json").send(body);
    } catch (error) {
      console.error(error.message);
      res.status(502).json({ error: "upstream unavailable" });
    }
  });
  app.get("/healthz", (req, res) => res.json({ status: "ok" }));
  app.listen(port, "127.0.0.1");
}
