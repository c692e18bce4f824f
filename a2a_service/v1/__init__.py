"""Generated gRPC/protobuf modules for ``a2a_service.v1`` (``make protos``); do not edit by hand."""
