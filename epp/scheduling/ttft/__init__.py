"""Time-to-first-token prediction: what epp's default policy minimises.

``LatencyLearner`` learns each endpoint's prefill and decode-step cost online from its requests (no GPU,
model or profile assumed), ``EndpointLedger`` keeps the load this epp sent each endpoint (instant,
between scrapes), and ``TTFTPredictor`` combines them with the last scrape and the prefix index's cache
hit into one prediction per endpoint.
"""

from epp.scheduling.ttft.batch import BatchPredictor, Predictions
from epp.scheduling.ttft.learn import EndpointLearner, LatencyEstimate, LatencyLearner
from epp.scheduling.ttft.ledger import EndpointLedger, Flight
from epp.scheduling.ttft.predictor import DecodeLoad, Prediction, TTFTPredictor
from epp.scheduling.ttft.recency import PrefixRecency

__all__ = ["BatchPredictor", "DecodeLoad", "EndpointLearner", "EndpointLedger", "Flight", "LatencyEstimate",
           "LatencyLearner", "Prediction", "Predictions", "PrefixRecency", "TTFTPredictor"]
