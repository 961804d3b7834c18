"""Engine KV-cache events: decoding vLLM/SGLang ZMQ messages and subscribing to engines."""
