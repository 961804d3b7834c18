"""epp's own gRPC-over-HTTP/2 server for the ext_proc port (``--grpc-server native``, the default; ``grpcio`` selects grpc.aio)."""
