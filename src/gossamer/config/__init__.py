"""Resource models, YAML loading with positions, and validation (apiVersion gossamer.dev/v1alpha1)."""
