"""The plugin kernel every extension point shares (GIE's ``framework/interface/plugin``): a plugin's
type and instance name, strict parameter decoding, and the registry of factories with the handle a
factory is given. Scheduling, request parsing and the data-layer sources build on it; it imports only
``epp._util`` and the datastore's read views."""
