from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from mpsl.config import EncoderConfig, ModelConfig, TokenizerConfig
from mpsl.data import DatasetSpec, ModalitySpec
from mpsl.errors import ConfigError, ModelError
from mpsl.models import ENCODERS, FUSIONS, POOLINGS, TOKENIZERS, build_encoder, build_split_model
from mpsl.models.tokenizers import build_tokenizer
from mpsl.packaged import minilm_dir

TINY_ENCODER = EncoderConfig(source="random", width=32, depth=4, heads=2)
SHAPES = {"image": (3, 16, 16), "audio": (1, 16, 24), "text": (6,), "sentence": (2, 20), "clip-text": (2, 8)}
EXPECTED_TOKENS = {"image": 1 + 4 * 4, "audio": 1 + 4 * 6, "text": 6, "sentence": 2, "clip-text": 2}
CLIP_TEXT_DIM = 24


def _inputs(kind: str, b: int) -> torch.Tensor:
    if kind in ("text", "clip-text"):
        return torch.randint(1, 100, (b, *SHAPES[kind]))
    return torch.randn(b, *SHAPES[kind])


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random CLIP saved the way a user's local CLIP directory is."""
    from transformers import CLIPConfig, CLIPModel

    text = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
            "vocab_size": 100, "max_position_embeddings": 8, "projection_dim": CLIP_TEXT_DIM,
            "bos_token_id": 98, "eos_token_id": 99}
    vision = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
              "image_size": 8, "patch_size": 4}
    path = tmp_path_factory.mktemp("clip")
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=CLIP_TEXT_DIM)).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("kind", TOKENIZERS.names())
def test_tokenizers_emit_cls_led_tokens_of_the_encoder_width(kind: str, clip_dir: str) -> None:
    bundle = build_encoder(TINY_ENCODER)
    tok = build_tokenizer(ModalitySpec(kind, SHAPES[kind]), ModelConfig(encoder=TINY_ENCODER,
                          image=TokenizerConfig(patch=(4, 4)), audio=TokenizerConfig(patch=(4, 4)),
                          text_encoder=clip_dir), bundle)

    out = tok(_inputs(kind, 3))

    assert out.shape == (3, EXPECTED_TOKENS[kind], 32)
    out.sum().backward()
    assert all(p.grad is not None for p in tok.parameters() if p.requires_grad)


def test_clip_text_tokens_are_the_frozen_text_towers_vectors_zero_padded(clip_dir: str) -> None:
    from transformers import CLIPTextModelWithProjection

    from mpsl.experiment.averaging import trainable_state

    bundle = build_encoder(TINY_ENCODER)
    tok = build_tokenizer(ModalitySpec("clip-text", (2, 8)), ModelConfig(encoder=TINY_ENCODER, text_encoder=clip_dir),
                          bundle)
    tok.sentences.norm = torch.nn.Identity()  # look at the vectors themselves
    ids = _inputs("clip-text", 3)

    out = tok.train()(ids)

    reference = CLIPTextModelWithProjection.from_pretrained(clip_dir).eval()(input_ids=ids.reshape(6, 8)).text_embeds
    torch.testing.assert_close(out[..., :CLIP_TEXT_DIM], reference.reshape(3, 2, CLIP_TEXT_DIM))
    assert torch.count_nonzero(out[..., CLIP_TEXT_DIM:]) == 0 and out.grad_fn is None
    assert not any(name.startswith("text_model.") for name in trainable_state(tok))  # never trained or sent


def test_clip_text_without_a_text_encoder_is_a_config_error() -> None:
    from mpsl.errors import ConfigError

    with pytest.raises(ConfigError, match="model.text_encoder"):
        build_tokenizer(ModalitySpec("clip-text", (1, 8)), ModelConfig(encoder=TINY_ENCODER),
                        build_encoder(TINY_ENCODER))


def test_sentence_vectors_are_zero_padded_to_the_width_one_token_each() -> None:
    bundle = build_encoder(TINY_ENCODER)
    tok = build_tokenizer(ModalitySpec("sentence", (2, 20)), ModelConfig(encoder=TINY_ENCODER), bundle)
    tok.norm = torch.nn.Identity()  # look at the padding itself
    vectors = torch.randn(3, 2, 20)

    out = tok(vectors)

    assert torch.equal(out[..., :20], vectors) and torch.count_nonzero(out[..., 20:]) == 0


def test_text_tokenizer_starts_from_the_encoders_word_embeddings() -> None:
    bundle = build_encoder(TINY_ENCODER)
    tok = build_tokenizer(ModalitySpec("text", (6,)), ModelConfig(encoder=TINY_ENCODER), bundle)

    assert torch.equal(tok.words.weight, bundle.word_embeddings.weight)
    assert tok.words.weight.data_ptr() != bundle.word_embeddings.weight.data_ptr()  # a client-owned copy


def test_text_ids_outside_the_vocabulary_are_named_and_meta_shapes_still_work() -> None:
    # Prepare
    bundle = build_encoder(TINY_ENCODER)
    tok = build_tokenizer(ModalitySpec("text", (6,)), ModelConfig(encoder=TINY_ENCODER), bundle)
    vocab = tok.words.num_embeddings
    # Execute / Assert: a foreign tokenizer's ids stop with a clear error ...
    with pytest.raises(ModelError, match=f"outside the encoder's vocabulary of {vocab}"):
        tok(torch.full((2, 6), vocab, dtype=torch.long))
    # ... while shape-only passes on the meta device (cost and scaling tables) skip the check
    meta = copy.deepcopy(tok).to("meta")
    assert meta(torch.zeros(2, 6, dtype=torch.long, device="meta")).shape == (2, 6, 32)


@pytest.mark.parametrize("k", [0, 1, 4])
def test_only_the_last_k_blocks_train(k: int) -> None:
    bundle = build_encoder(EncoderConfig(source="random", width=32, depth=4, heads=2, trainable_blocks=k))

    trainable = [any(p.requires_grad for p in b.parameters()) for b in bundle.encoder.blocks]

    assert trainable == [False] * (4 - k) + [True] * k


def test_default_trains_half_the_blocks_and_too_many_is_a_config_error() -> None:
    bundle = build_encoder(TINY_ENCODER)
    assert [any(p.requires_grad for p in b.parameters()) for b in bundle.encoder.blocks] == [False, False, True, True]
    with pytest.raises(ConfigError, match="trainable_blocks"):
        build_encoder(EncoderConfig(source="random", width=32, depth=4, heads=2, trainable_blocks=5))


@pytest.mark.parametrize("fusion", ["early", "late"])
@pytest.mark.parametrize("head", ["client", "server"])
def test_fusions_and_head_placements(fusion: str, head: str) -> None:
    modalities = {"image": ModalitySpec("image", (3, 16, 16)), "audio": ModalitySpec("audio", (1, 16, 24))}
    spec = DatasetSpec("t", modalities, 5)
    cfg = ModelConfig(encoder=TINY_ENCODER, fusion=fusion, head=head,
                      image=TokenizerConfig(patch=(4, 4)), audio=TokenizerConfig(patch=(4, 4)))
    client, server = build_split_model(cfg, spec, seed=0)

    out = server(client.embed({"image": _inputs("image", 2), "audio": _inputs("audio", 2)}))
    logits = client.head(out)

    assert out.shape == ((2, 2, 32) if head == "client" else (2, 5))
    assert logits.shape == (2, 5)


def test_late_fusion_keeps_modalities_apart_and_early_does_not() -> None:
    bundle = build_encoder(TINY_ENCODER)
    a, b = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    b_changed = b + 1.0
    cls = POOLINGS.get("cls")

    def run(name: str, second: torch.Tensor) -> torch.Tensor:
        features, rows = FUSIONS.get(name)(bundle.encoder, {"image": a, "audio": second}, cls, set())
        assert rows == ["image", "audio"]
        return features  # [2, 2, 32]

    early = run("early", b), run("early", b_changed)
    late = run("late", b), run("late", b_changed)

    assert not torch.allclose(early[0][:, 0], early[1][:, 0])  # image CLS attends to audio tokens
    torch.testing.assert_close(late[0][:, 0], late[1][:, 0])  # image CLS never sees audio


@pytest.mark.parametrize("head", ["client", "server"])
def test_dual_fusion_embeds_the_image_and_each_sentence_on_its_own(head: str) -> None:
    # Prepare: an image and three caption vectors per sample
    modalities = {"image": ModalitySpec("image", (3, 16, 16)), "captions": ModalitySpec("sentence", (3, 20))}
    spec = DatasetSpec("r", modalities, 0, task="retrieval", fusion="dual")
    cfg = ModelConfig(encoder=TINY_ENCODER, head=head, image=TokenizerConfig(patch=(4, 4)))
    client, server = build_split_model(cfg, spec, seed=0)
    images, captions = _inputs("image", 2), torch.randn(2, 3, 20)
    changed = captions.clone()
    changed[:, 2] += 1.0
    # Execute
    out = client.head(server(client.embed({"image": images, "captions": captions})))
    out_changed = client.head(server(client.embed({"image": images, "captions": changed})))
    # Assert: [b, 1 + K, D]; changing caption 2 moves only its own embedding
    assert out.shape == (2, 4, 32)
    torch.testing.assert_close(out[:, :3], out_changed[:, :3])
    assert not torch.allclose(out[:, 3], out_changed[:, 3])


def test_real_minilm_weights_load_offline_and_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: any attempt to reach a hub would fail loudly
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    from safetensors.torch import load_file

    # Execute
    bundle = build_encoder(EncoderConfig(source="minilm"))
    out = bundle.encoder(torch.randn(2, 9, 384))

    # Assert: the real checkpoint's weights, not a random init
    state = load_file(str(minilm_dir() / "model.safetensors"))
    key = next(k for k in state if k.endswith("encoder.layer.5.output.dense.weight"))
    assert torch.equal(bundle.encoder.blocks[5].output.dense.weight, state[key])
    assert bundle.encoder.depth == 6 and bundle.width == 384
    assert bundle.word_embeddings.num_embeddings == 30522
    assert out.shape == (2, 9, 384) and torch.isfinite(out).all()


def test_missing_model_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"config\.json"):
        ENCODERS.get("hf-bert")(EncoderConfig(source="hf-bert", path=str(tmp_path)))
    with pytest.raises(ConfigError, match="unknown encoder source 'gpt'"):
        build_encoder(EncoderConfig(source="gpt"))
