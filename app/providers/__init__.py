"""Where TURN credentials come from: Cloudflare's TURN API, or a TURN server's shared secret."""
