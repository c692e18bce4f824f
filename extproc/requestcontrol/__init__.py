"""The request steps between the ext_proc handler and the scheduler, on plain data (no protobuf)."""
