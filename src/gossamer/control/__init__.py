"""The control plane: API, store, registry, translator, distribution."""
