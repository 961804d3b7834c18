"""Profiles plugins."""
