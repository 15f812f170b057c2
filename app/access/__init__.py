"""Who may ask, and who they are: the client's address, access tokens, origins, JWTs and the per-user id."""
