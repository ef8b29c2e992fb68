"""Leaf package shared by every other package: clock, config and models.

It imports nothing from the rest of the project (tests/unit/test_import_layers.py).
"""
