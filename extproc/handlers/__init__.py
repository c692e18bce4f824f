"""The ext_proc handler layer: the only code that speaks Envoy's ext_proc protobufs."""
