"""How callers reach the store: HTTP/JSON (FastAPI) and gRPC, their wire mapping, auth and the clients.

Import nothing here: ``a2a_service.client`` loads ``_wire`` without FastAPI or grpc."""
