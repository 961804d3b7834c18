"""The Envoy ext_proc protocol adapter: stream state machine, reply builders, gRPC servers."""
