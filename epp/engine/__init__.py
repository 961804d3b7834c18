"""A pure, clock-driven model of one vLLM engine: scheduler, paged KV cache with prefix caching, calibrated step latency."""
