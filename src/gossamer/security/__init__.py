"""Mesh identity: SPIFFE IDs, the CA, CSRs, trust bundles, tokens and mTLS contexts."""
