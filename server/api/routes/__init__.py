"""Thin route handlers: read the request, call the Gateway, return its response."""
