"""A real Envoy for demos, e2e tests and benches: its config, the process, and the local gateway stack."""
