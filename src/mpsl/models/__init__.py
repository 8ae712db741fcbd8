"""Models: client tokenizers, the server's shared encoder, fusion and heads."""

from mpsl.models import vit_sources  # noqa: F401  (registers the ViT-family encoder sources)
from mpsl.models.adapters import ADAPTERS, AttentionAdapter
from mpsl.models.encoder import ENCODERS, EncoderBundle, SharedEncoder
from mpsl.models.finetune import build_encoder
from mpsl.models.fusion import FUSIONS, POOLINGS
from mpsl.models.heads import HEADS, ClassifierHead, RetrievalHead
from mpsl.models.presets import PRESETS, ArchPreset, random_encoder_overrides
from mpsl.models.split import ClientModel, ServerModel, WholeModel, build_split_model, example_inputs
from mpsl.models.tokenizers import TOKENIZERS, PatchTokenizer, TextTokenizer

__all__ = [
    "ADAPTERS",
    "ENCODERS",
    "FUSIONS",
    "HEADS",
    "POOLINGS",
    "PRESETS",
    "TOKENIZERS",
    "ArchPreset",
    "AttentionAdapter",
    "ClassifierHead",
    "ClientModel",
    "EncoderBundle",
    "PatchTokenizer",
    "RetrievalHead",
    "ServerModel",
    "SharedEncoder",
    "TextTokenizer",
    "WholeModel",
    "build_encoder",
    "build_split_model",
    "example_inputs",
    "random_encoder_overrides",
]
