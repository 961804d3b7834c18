"""Filters plugins."""
