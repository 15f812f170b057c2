"""The web layer: the factory, the views and middleware, JSON errors, the admin commands, metrics, static files."""
