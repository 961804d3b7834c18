"""llm-d's disaggregation decision counters: ``llm_d_inference_scheduler_disagg_decision_total``
(labels ``model_name``, ``decision_type``: decode-only, prefill-decode, encode-decode,
encode-prefill-decode), and for ``pd-profile-handler`` also the deprecated
``llm_d_inference_scheduler_pd_decision_total`` (decode-only, prefill-decode), once per scheduled request
(llm-d-router ``pkg/metrics/metrics.go``)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from epp.scheduling.plugins.profiles.disagg import PD_PROFILE_HANDLER, DisaggProfileHandler

LABELS = ("model_name", "decision_type")


class DisaggTelemetry:
    def __init__(self, registry: CollectorRegistry, model_label: Callable[[str], str]) -> None:
        self.decisions = Counter("llm_d_inference_scheduler_disagg_decision_total",
                                 "Total number of disaggregation routing decisions made", LABELS, registry=registry)
        self.pd_decisions = Counter("llm_d_inference_scheduler_pd_decision_total",
                                    "Total number of P/D disaggregation decisions made", LABELS, registry=registry)
        self.model_label = model_label

    def track(self, handler: DisaggProfileHandler) -> None:
        legacy = handler.typed_name.type == PD_PROFILE_HANDLER

        def observe(model: str, decision: str) -> None:
            label = self.model_label(model or "unknown")
            self.decisions.labels(label, decision).inc()
            if legacy:
                self.pd_decisions.labels(label, decision).inc()

        handler.decision_observer = observe
