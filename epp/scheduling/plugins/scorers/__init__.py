"""Scorers plugins."""
