"""Endpoint discovery: sources that keep the datastore's membership current."""
