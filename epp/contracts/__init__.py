"""Contracts that cross layers: plain records and small protocols, apart from every implementation.

A lower layer may not import a higher one, yet some vocabulary is shared across them: the KV-cache
events engines publish (decoded in ``epp.kvevents``, fed by ``epp.datalayer``, indexed by
``epp.scheduling``) and what scheduling plugins ask the data layer for (``datalayer``). Those live
here; this package imports nothing else of epp but the tokenizer contract (``epp.tokenizer.protocol``).
"""
