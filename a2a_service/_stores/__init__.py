"""Where queues live: the ``Store`` protocol, the pure queue model, the memory and Redis stores."""
