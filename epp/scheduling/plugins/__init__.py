"""Built-in plugins, one per module, grouped by extension point."""
