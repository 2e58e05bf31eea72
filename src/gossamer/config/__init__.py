"""Resource models, YAML loading with positions, and validation (gossamer.dev/v1alpha1)."""
