"""The HTTP API: app assembly, public and operator routes, tokens, metrics, OpenAPI, explorer."""
