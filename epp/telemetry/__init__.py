"""epp's own metrics: Prometheus recorder with the reference names, and the HTTP endpoint serving them."""

from epp.telemetry.metrics import Telemetry, error_code

__all__ = ["Telemetry", "error_code"]
