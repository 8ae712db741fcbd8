"""`mpsl export`: the trained encoder loads back with transformers (and its LoRA with peft) and computes what
mpsl's encoder computes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mpsl.cli import main
from mpsl.config import Config, load_config
from mpsl.data import load_dataset
from mpsl.errors import MpslError
from mpsl.experiment.export import export_encoder
from mpsl.experiment.results import (
    ClientMemory,
    Comm,
    Cost,
    FlopsPerSample,
    RunResult,
    TrainableParams,
    Versions,
)
from mpsl.experiment.run import run_method
from mpsl.models import SharedEncoder
from mpsl.models.finetune import build_encoder
from tests.helpers import tiny_config


def _results(cfg: Config) -> RunResult:
    """A results.json of one MPSL epoch of `cfg`, with nothing measured: what export reads is the config."""
    zero = {f.name: 0 for f in dataclasses.fields(Comm)}
    return RunResult(
        method="mpsl", dataset=cfg.data.name, task="classification", metric="test_accuracy", num_clients=1, epochs=1,
        seed=cfg.seed, config=cfg, history=(), final={"test_accuracy": 0.0}, personalized=(), comm=Comm(**zero),
        cost=Cost(FlopsPerSample(0.0, 0.0, 0.0, 0.0), ClientMemory(0, 0, 0, 0, 1), TrainableParams(0, 0, 0, 0)),
        samples_per_client=(1,), modalities_per_client=(("image",),), client_batch_size=1, wall_seconds=0.0,
        versions=Versions("0", "0", "0", None))


def _trained_encoder(cfg, folder: Path) -> SharedEncoder:
    """mpsl's own encoder of a finished run: built as the run built it, with the saved server weights."""
    encoder = build_encoder(cfg.model.encoder).encoder
    server = load_file(str(folder / "server.safetensors"))
    encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in server.items() if k.startswith("encoder.")})
    return encoder.eval()


def _tokens(width: int) -> torch.Tensor:
    return torch.randn(3, 7, width, generator=torch.Generator().manual_seed(1))  # [B, T, D] cut-layer tokens


@pytest.mark.parametrize("finetune", ["last_k", "lora"])
def test_the_exported_encoder_loads_with_transformers_and_peft_and_matches_mpsl(tmp_path: Path, finetune: str) -> None:
    # Prepare: a short run whose blocks (or LoRA adapters) really moved
    cfg = tiny_config(f"out_dir={tmp_path}", "name=exp", "methods=[mpsl]", f"model.encoder.finetune={finetune}",
                      "model.encoder.trainable_blocks=2", "train.server_lr=1e-2", "model.encoder.lora.rank=4",
                      "eval.ablations=false", "eval.personalized=false")
    folder = tmp_path / "exp" / "mpsl"
    run_method(cfg, load_dataset(cfg.data), "mpsl", folder)

    # Execute: the command line, in this process (the CLI's own processes are tested in tests/test_cli.py)
    code = main(["export", str(tmp_path / "exp")])

    # Assert
    from peft import PeftModel
    from transformers import AutoModel

    assert code == 0
    out = folder / "export"
    assert {"config.json", "model.safetensors"} <= {p.name for p in (out / "encoder").iterdir()}
    model = AutoModel.from_pretrained(out / "encoder").eval()
    untrained = AutoModel.from_pretrained(out / "encoder").eval()
    if finetune == "lora":
        assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (out / "adapter").iterdir()}
        model = PeftModel.from_pretrained(model, out / "adapter").eval()
        bert = model.base_model.model
    else:
        assert not (out / "adapter").exists()
        bert = model
    x = _tokens(cfg.model.encoder.width)
    with torch.no_grad():
        theirs = bert.encoder(x).last_hidden_state  # [B, T, D]
        ours = _trained_encoder(cfg, folder)(x)  # [B, T, D]
        without_adapter = untrained.encoder(x).last_hidden_state  # [B, T, D]
    assert torch.allclose(theirs, ours, atol=1e-5), (theirs - ours).abs().max()
    if finetune == "lora":  # guard against a vacuous pass: the trained adapter is what makes the difference
        assert not torch.allclose(without_adapter, ours, atol=1e-3)


def test_a_minilm_run_exports_its_blocks_with_the_base_models_embeddings_and_tokenizer(tmp_path: Path) -> None:
    # Prepare: a run folder of the packaged MiniLM whose saved blocks differ from the base's
    from transformers import AutoModel, AutoTokenizer

    cfg = load_config(None, ["model.encoder.source=minilm"])
    encoder = build_encoder(cfg.model.encoder).encoder
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    state = {f"encoder.{k}": v.contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, tmp_path / "server.safetensors")
    _results(cfg).save(tmp_path / "results.json")

    # Execute
    (written,) = export_encoder(tmp_path, tmp_path / "out")

    # Assert
    model = AutoModel.from_pretrained(written).eval()
    x = _tokens(384)
    with torch.no_grad():
        assert torch.allclose(model.encoder(x).last_hidden_state, encoder.eval()(x), atol=1e-5)
    assert len(AutoTokenizer.from_pretrained(written)) == 30522  # the base model's WordPiece vocabulary came along


def test_an_encoder_of_a_vit_source_is_refused_naming_the_sources_that_export(tmp_path: Path) -> None:
    # Prepare
    cfg = load_config(None, ["model.encoder.source=vit", "model.encoder.preset=vit-ti16"])
    _results(cfg).save(tmp_path / "results.json")

    # Execute
    with pytest.raises(MpslError) as err:
        export_encoder(tmp_path, tmp_path / "out")

    # Assert
    assert "'vit'" in str(err.value) and "minilm, hf-bert, random" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_a_run_with_blocks_on_the_clients_is_refused_naming_the_key(tmp_path: Path) -> None:
    # Prepare
    _results(tiny_config("model.client_blocks=1")).save(tmp_path / "results.json")

    # Execute
    with pytest.raises(MpslError) as err:
        export_encoder(tmp_path, tmp_path / "out")

    # Assert
    assert "model.client_blocks" in str(err.value) and not (tmp_path / "out").exists()
