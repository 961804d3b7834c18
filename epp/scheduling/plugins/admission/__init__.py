"""Admission plugins: decide, before scheduling, whether a request may enter at all."""
