"""HTTP API v1: flask-smorest blueprints over the service functions."""
