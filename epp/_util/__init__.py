"""Small helpers every layer may import: clocks, block hashing."""
