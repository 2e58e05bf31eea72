"""Chaos scenarios on Gossamer meshes: the library behind bench/chaos and tests/integration."""
