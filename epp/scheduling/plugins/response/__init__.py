"""Plugins that act on the response phase (ResponseReceived)."""
