"""HTTP codecs and message types; no I/O here."""
