"""The sidecar data plane: listeners, connections, router, clusters."""
