"""Time-to-first-token prediction: what epp's default policy minimises.

``PrefillCost`` times prompts with the engine simulator's calibrated latency model, ``EndpointLedger``
keeps the load this epp sent each endpoint (instant, between scrapes), and ``TTFTPredictor`` combines
them with the last scrape and the prefix index's cache hit into one prediction per endpoint.
"""

from epp.scheduling.ttft.batch import BatchPredictor, Predictions
from epp.scheduling.ttft.cost import EngineShape, PrefillCost
from epp.scheduling.ttft.ledger import EndpointLedger, Flight
from epp.scheduling.ttft.predictor import DecodeLoad, Prediction, TTFTPredictor
from epp.scheduling.ttft.recency import PrefixRecency

__all__ = ["BatchPredictor", "DecodeLoad", "EndpointLedger", "EngineShape", "Flight", "Prediction", "Predictions",
           "PrefillCost", "PrefixRecency", "TTFTPredictor"]
