"""Scheduling plugins, one per module, grouped by extension point. The table naming every plugin type
epp ships is ``epp.config.plugins.BUILTIN_PLUGINS``."""
