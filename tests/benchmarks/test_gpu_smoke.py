"""The GPU benchmark runs end to end on the CPU in its smoke mode, so it cannot rot between GPU runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.gpu import main


def test_the_gpu_benchmark_measures_both_methods_on_both_paper_shapes_in_smoke_mode(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"

    rows = main(["--device", "cpu", "--small", "--out", str(out)])

    assert [r.task for r in rows] == ["coco-qa", "meld"]
    # 32 px / 16 px patches + CLS + 1 sentence; 12 x 4 audio patches + CLS + 1 sentence
    assert [r.tokens for r in rows] == [2 * 2 + 1 + 1, 12 * 4 + 1 + 1]
    for r in rows:
        assert r.centralized_samples_s > 0 and r.mpsl_samples_s > 0
        assert math.isclose(r.ratio, r.centralized_samples_s / r.mpsl_samples_s, rel_tol=1e-9)
        assert 0.0 <= r.outside_encoder_share < 1.0
        assert r.model_gflop_per_sample > 0
    assert [row["task"] for row in json.loads(out.read_text())] == ["coco-qa", "meld"]
