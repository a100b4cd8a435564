"""Latency measured on the device: the timer and the device description.

Needs only torch; no Ray or Optuna import, so it runs on a bare GPU box.
"""

from nas.latency.device import describe_device, resolve_device
from nas.latency.timer import Timing, measure

__all__ = ["Timing", "describe_device", "measure", "resolve_device"]
