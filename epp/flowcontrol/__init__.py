"""llm-d's flow control: requests wait in priority bands while the pool is saturated (``controller``),
ordered and shared out by the configured policies (``policies``), built from ``flowControl:`` (``build``).

Nothing is imported here: ``epp.config`` reads the policy types from ``policies`` while ``build`` reads
``epp.config``, so importing the package must not pull either side in.
"""
