"""The web framework's side of the gateway: the FastAPI app and its lifespan (``create_app``), uvicorn with the
connection limits uvicorn leaves out (``http_server``), the one middleware (request id, header rules, auth, body
limits, request metrics), error handlers, the OpenAPI schema, typed dependencies and thin route handlers. Below
``api`` no module imports a web framework."""
