"""Stores of desired state with revisions and watch."""
