"""Models: client tokenizers, the server's shared encoder, fusion and heads."""

from mpsl.models.encoder import ENCODERS, EncoderBundle, SharedEncoder, build_encoder
from mpsl.models.fusion import FUSIONS, POOLINGS
from mpsl.models.heads import ClassifierHead
from mpsl.models.split import ClientModel, ServerModel, build_split_model
from mpsl.models.tokenizers import TOKENIZERS, PatchTokenizer, TextTokenizer

__all__ = [
    "ENCODERS", "FUSIONS", "POOLINGS", "TOKENIZERS", "ClassifierHead", "ClientModel", "EncoderBundle",
    "PatchTokenizer", "ServerModel", "SharedEncoder", "TextTokenizer", "build_encoder", "build_split_model",
]
