"""Soak testing: mixed traffic through real Envoys and ``epp serve`` while faults are injected on a schedule.

``bench/soak.py`` runs it for minutes and prints the report; ``tests/soak`` runs a one-minute version.
"""
