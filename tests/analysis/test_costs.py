"""Client memory, FLOP shares and the traffic-vs-backbone table agree with what training really does."""

from __future__ import annotations

import pytest
import torch

from mpsl.analysis.accounting import client_memory, training_flops
from mpsl.analysis.costs import COST_TASKS, task_cost
from mpsl.analysis.scaling import model_traffic, scaling_table
from mpsl.data import load_dataset
from mpsl.experiment.averaging import trainable_state
from mpsl.experiment.methods.federated import FedAvg
from mpsl.experiment.methods.split_learning import Mpsl
from mpsl.models import PRESETS, WholeModel, build_split_model
from mpsl.tasks import ClassificationTask
from tests.helpers import tiny_config


def test_analytic_traffic_equals_what_mpsl_and_fedavg_put_on_the_wire() -> None:
    # Prepare
    cfg = tiny_config("model.encoder.trainable_blocks=1", "partition.kind=iid")
    data = load_dataset(cfg.data)
    split, fl = Mpsl(cfg, data), FedAvg(cfg, data)

    # Execute
    split.train_round(0, progress=False)
    fl.train_round(0, progress=False)
    computed = model_traffic(cfg, data.spec, samples_per_client=len(data.train) / cfg.num_clients)

    # Assert
    mpsl_payload = sum(t.payload_up + t.payload_down for t in split.traffic()) / cfg.num_clients
    fl_payload = sum(t.payload_up + t.payload_down for t in fl.traffic()) / cfg.num_clients
    assert computed["mpsl_bytes_per_client_epoch"] == mpsl_payload
    assert computed["fedavg_bytes_per_client_round"] == fl_payload
    assert computed["encoder_parameters"] == sum(p.numel() for p in split.server.model.encoder.parameters())


def test_fedavg_traffic_outgrows_mpsl_traffic_with_the_backbone() -> None:
    cfg = tiny_config()
    table = scaling_table(cfg, load_dataset(cfg.data).spec, samples_per_client=500)

    assert [row["preset"] for row in table] == ["vit-ti16", "vit-s16", "vit-b16", "vit-l14", "vit-h14"]
    assert set(PRESETS) == {row["preset"] for row in table}
    ratio = [row["fedavg_bytes_per_client_round"] / row["mpsl_bytes_per_client_epoch"] for row in table]
    assert ratio == sorted(ratio) and ratio[-1] > 10 * ratio[0]  # width^2 x depth vs width
    vit_b = next(row for row in table if row["preset"] == "vit-b16")
    assert 85e6 < vit_b["encoder_parameters"] < 86e6  # ViT-B/16's 12 blocks: 85.05 M


def test_client_memory_counts_parameters_adam_state_and_activations() -> None:
    cfg = tiny_config()
    data = load_dataset(cfg.data)
    client, server = build_split_model(cfg.model, data.spec, cfg.seed)
    model, batch, task = WholeModel(client, server), data.train.subset(torch.arange(4)), ClassificationTask()

    split = client_memory(model, batch, task, runs_encoder=False)
    whole = client_memory(model, batch, task, runs_encoder=True)

    assert split.parameters == 4 * sum(p.numel() for p in client.parameters())
    assert split.optimizer == 2 * 4 * sum(t.numel() for t in trainable_state(client).values())
    assert whole.parameters == 4 * sum(p.numel() for p in model.parameters())
    assert 0 < split.activations < whole.activations
    bigger = client_memory(model, data.train.subset(torch.arange(16)), task, runs_encoder=False)
    assert bigger.activations > 2 * split.activations  # activations grow with the mini-batch


def test_flops_split_at_the_cut_add_up_to_the_whole_model() -> None:
    cfg = tiny_config()
    data = load_dataset(cfg.data)
    client, server = build_split_model(cfg.model, data.spec, cfg.seed)
    batch, task = data.train.subset(torch.arange(8)), ClassificationTask()
    from torch.utils.flop_counter import FlopCounterMode

    flops = training_flops(client, server, batch, task)
    with FlopCounterMode(display=False) as counter:
        task.loss(WholeModel(client, server)(batch.inputs), batch.labels).backward()

    assert flops.client_per_sample + flops.server_per_sample == counter.get_total_flops() / 8
    assert flops.server_per_sample > 10 * flops.client_per_sample


@pytest.mark.parametrize("task", COST_TASKS.names())
def test_cost_of_every_paper_task_grows_with_the_backbone(task: str) -> None:
    small, large = task_cost("vit-ti16", task), task_cost("vit-b16", task)

    assert large["total_over_client"] > small["total_over_client"] > 1
    assert large["fl_bytes_per_round_each_way"] > 10 * small["fl_bytes_per_round_each_way"]
    assert large["bytes_up_fp32"] == 4 * small["bytes_up_fp32"]  # same tokens, 768 / 192 wider
    assert small["total_over_client_no_attention"] < small["total_over_client"]


def test_cost_at_vit_b16_reproduces_the_papers_shapes_and_ratio() -> None:
    coco = task_cost("vit-b16", "coco-qa", wire_dtype="float16")

    assert coco["tokens"] == {"image": 197, "text": 1}
    assert coco["bytes_up_fp32"] == 4 * (198 + 2) * 768  # tokens + the two modality features' gradient
    assert coco["bytes_up_float16"] == coco["bytes_up_fp32"] // 2
    assert 140 < coco["total_over_client"] < 160  # the paper's ~150x for COCO-QA at ViT-B
    assert 400 < task_cost("vit-b16", "meld")["total_over_client"] < 600  # and ~500x for MELD
