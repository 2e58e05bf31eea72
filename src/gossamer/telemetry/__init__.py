"""Metrics and access logs."""
