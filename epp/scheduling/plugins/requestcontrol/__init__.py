"""Request-control plugins: request headers in, attributes and metadata out; no endpoint choice."""
