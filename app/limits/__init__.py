"""The rate limit on the credential endpoints."""
