"""Pickers plugins."""
