"""A pure, clock-driven model of one vLLM engine: continuous batching, a paged KV cache with prefix
caching, and calibrated step latency."""
