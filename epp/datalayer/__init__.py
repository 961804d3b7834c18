"""The data layer: every socket, task and exported series that feeds scheduling plugins with engine data.

Plugins declare what they need while being built (``epp.contracts.datalayer.DataNeeds``, recorded
through their ``PluginHandle``); the composition root builds one ``DataLayer`` for those needs,
attaches it to the datastore, registers its series and runs it as an async context manager (``epp
serve``). Plugins keep only pure views — an index, a feed's trust state — so offline replay runs the
same plugins with its simulated engines feeding those views instead.
"""

from epp.datalayer.layer import DataLayer

__all__ = ["DataLayer"]
