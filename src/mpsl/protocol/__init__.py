"""The MPSL protocol: messages, their wire encoding, both sides, and the step that drives them."""

from mpsl.protocol.client import SplitClient
from mpsl.protocol.group import ClientGroup, HandleGroup
from mpsl.protocol.handle import ClientHandle
from mpsl.protocol.messages import CutGrad, EpochMetrics, FeatureGrad, Features, Tokens, Weights
from mpsl.protocol.serde import Codec, encoded_nbytes, payload_nbytes
from mpsl.protocol.server import SplitServer
from mpsl.protocol.step import StepResult, mpsl_step

__all__ = ["ClientGroup", "ClientHandle", "Codec", "CutGrad", "EpochMetrics", "FeatureGrad", "Features", "HandleGroup",
           "SplitClient", "SplitServer", "StepResult", "Tokens", "Weights", "encoded_nbytes", "mpsl_step",
           "payload_nbytes"]
