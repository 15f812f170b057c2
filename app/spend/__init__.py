"""The spend ceiling: the month's TURN egress from Cloudflare's analytics, against ICE_EGRESS_LIMIT_GB."""
