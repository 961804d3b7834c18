"""llm-d's flow control: requests wait in priority bands while the pool is saturated (``controller``),
ordered and shared out by the configured policies (``policies``), built from ``flowControl:`` (``build``)."""

from epp.flowcontrol.build import FLOW_CONTROL_GATE, build_admission, flow_control_settings
from epp.flowcontrol.controller import FlowController, FlowControlSettings, Outcome

__all__ = ["FLOW_CONTROL_GATE", "FlowControlSettings", "FlowController", "Outcome", "build_admission",
           "flow_control_settings"]
