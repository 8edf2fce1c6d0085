"""Callbacks that go in ``model.fit``."""
