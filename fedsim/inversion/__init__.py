"""Engines shared by attack plugins."""
