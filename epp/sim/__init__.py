"""``epp sim``: a vLLM-compatible (or SGLang-flavoured) simulated engine over HTTP, for demos,
end-to-end tests and CPU-only clusters. The engine itself is ``epp.engine``."""
