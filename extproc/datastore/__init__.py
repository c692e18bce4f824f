"""State the router reads: endpoints (health, load), workflow assignments (local and shared), the prefix index,
requests in flight, and the poller that keeps endpoint load fresh."""
