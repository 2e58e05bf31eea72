"""Request filters, one module each."""
