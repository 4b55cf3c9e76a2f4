"""``precision: auto``: the probe's choice (fake timer), its cache key and invalidation, and the
choice recorded in a real stage's metrics.json and MLflow run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from nsp.config import NoiseConfig, TrainConfig
from nsp.train import precision as P
from nsp.train.engine import make_classifier
from nsp.train.step import PseudoBatchSource, TrainStep

LABELED, UNLABELED, STEPS = 4, 8, 3  # images per probe step: 12; timed steps per round: 3


def fake_timer(seconds: dict[str, float]):
    """A clock on which each timed block of precision p takes ``seconds[p]``; calls come in the
    documented order (per round: fp32 start, fp32 end, bf16 start, bf16 end)."""
    ticks, t = [], 0.0
    for _ in range(2):  # rounds
        for p in P.PRECISIONS_PROBED:
            ticks += [t, t + seconds[p]]
            t += 100.0
    it = iter(ticks)
    return lambda: next(it)


def decide_auto(
    timer, *, arch: str = "nsp_resnet_xs", pseudo: bool = True, model: torch.nn.Module | None = None
) -> dict:
    cfg = TrainConfig(name="student", arch=arch, batch_size=LABELED, unlabeled_ratio=2.0,
                      precision="auto", noise=NoiseConfig(randaugment=False, crop_flip=False))  # fmt: skip
    x = torch.zeros((16, 1, 32, 32), dtype=torch.uint8)
    src = None
    if pseudo:
        src = PseudoBatchSource(images=x, index=torch.arange(16), targets=torch.full((16, 10), 0.1),
                                counts=torch.ones(16, dtype=torch.int64))  # fmt: skip
    model = model or make_classifier(arch=arch, num_classes=10, in_chans=1)
    return P.train_precision(cfg=cfg, model=model, device=torch.device("cpu"), labeled_x=x,
                             pseudo=src, step_cls=TrainStep, timer=timer)  # fmt: skip


def no_timer():
    raise AssertionError("the probe ran although the decision is cached")


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NSP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_bf16_slower_means_fp32_and_the_rates_are_recorded() -> None:
    d = decide_auto(fake_timer({"fp32": 1.0, "bf16": 2.0}))
    n = (LABELED + UNLABELED) * STEPS  # 36 images per timed block
    assert d == {"precision": "fp32", "fp32_img_per_s": n / 1.0, "bf16_img_per_s": n / 2.0,
                 "source": "probe"}  # fmt: skip


def test_bf16_faster_means_bf16_and_the_margin_favours_fp32() -> None:
    assert decide_auto(fake_timer({"fp32": 2.0, "bf16": 1.0}))["precision"] == "bf16"
    assert (
        decide_auto(fake_timer({"fp32": 2.0, "bf16": 1.0}), arch="nsp_resnet_s")["bf16_img_per_s"]
        == 36.0
    )
    # 4 % faster is within the margin (fp32 is exact): fp32; 10 % faster: bf16
    assert P.choose({"fp32": 100.0, "bf16": 104.0}) == "fp32"
    assert P.choose({"fp32": 100.0, "bf16": 110.0}) == "bf16"


def test_the_cache_answers_the_same_key_and_a_new_key_probes_again(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = decide_auto(fake_timer({"fp32": 1.0, "bf16": 3.0}))
    again = decide_auto(no_timer)  # same machine, torch, arch, batch: no probe
    assert again == {**first, "source": "cache"}
    files = list((cache / "precision").glob("train-*.json"))
    rec = json.loads(files[0].read_text())
    assert len(files) == 1 and rec["key"]["arch"] == "nsp_resnet_xs"
    assert rec["key"]["batch_shape"] == [LABELED + UNLABELED, 1, 32, 32]
    # another batch shape (no unlabeled half), another arch, another torch: each probes once
    assert decide_auto(fake_timer({"fp32": 3.0, "bf16": 1.0}), pseudo=False)["precision"] == "bf16"
    assert (
        decide_auto(fake_timer({"fp32": 3.0, "bf16": 1.0}), arch="nsp_resnet_s")["source"]
        == "probe"
    )
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    after = decide_auto(fake_timer({"fp32": 3.0, "bf16": 1.0}))
    assert after["source"] == "probe" and after["precision"] == "bf16"
    assert len(list((cache / "precision").glob("train-*.json"))) == 4
    # a damaged cache file is re-probed, not trusted
    files[0].write_text("{not json")
    monkeypatch.undo()
    monkeypatch.setenv("NSP_CACHE_DIR", str(cache))
    assert decide_auto(fake_timer({"fp32": 1.0, "bf16": 3.0}))["source"] == "probe"


def test_key_names_the_machine_and_explicit_precisions_never_probe() -> None:
    key = P.cache_key(kind="train", device=torch.device("cpu"), arch="a", batch_shape=(2, 1, 8, 8))
    assert key["torch"] == torch.__version__ and key["threads"] == torch.get_num_threads()
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), None)  # fmt: skip
    if model:
        assert key["machine"].startswith(model + " [")
    other = P.cache_key(kind="eval", device=torch.device("cpu"), arch="a", batch_shape=(2, 1, 8, 8))
    assert P.cache_path(key) != P.cache_path(other)
    for p in ("fp32", "bf16"):
        cfg = TrainConfig(name="t", arch="nsp_resnet_xs", precision=p)
        got = P.train_precision(cfg=cfg, model=torch.nn.Identity(), device=torch.device("cpu"),
                                labeled_x=torch.zeros(1), step_cls=None, timer=no_timer)  # fmt: skip
        assert got == {"precision": p}


def test_the_probe_leaves_the_global_rng_alone() -> None:
    model = make_classifier(arch="nsp_resnet_xs", num_classes=10, in_chans=1, dropout=0.5)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    decide_auto(fake_timer({"fp32": 1.0, "bf16": 2.0}), model=model)  # dropout draws inside
    assert torch.equal(before, torch.get_rng_state())


def test_a_stage_records_the_choice_in_metrics_json_and_mlflow(
    tmp_path: Path, learnable_idx_dir: Path, cache: Path
) -> None:
    """`nsp prepare` + `nsp train teacher` (precision: auto, tracking on): metrics.json, the
    checkpoint-free cache record and the MLflow run agree on the choice and both rates."""
    import mlflow

    from tests.pipeline_helpers import TINY_PARAMS

    params = {k: TINY_PARAMS[k] for k in ("prepare", "tracking", "teacher")}
    params["teacher"] = {**params["teacher"], "epochs": 1, "precision": "auto"}
    params["tracking"] = {**params.get("tracking", {}), "enabled": True, "register": False}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "NSP_DATA_DIR": str(learnable_idx_dir), "MLFLOW_TRACKING_URI": uri,
           "MLFLOW_DISABLE_TELEMETRY": "true", "NSP_CACHE_DIR": str(cache)}  # fmt: skip
    nsp = str(Path(sys.executable).parent / "nsp")
    for cmd in (["prepare"], ["train", "teacher", "--no-progress"]):
        p = subprocess.run([nsp, *cmd], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((tmp_path / "outputs/models/teacher/metrics.json").read_text())
    rec = json.loads(next((cache / "precision").glob("train-*.json")).read_text())
    assert m["precision"] == rec["precision"] and m["bf16"] == (rec["precision"] == "bf16")
    assert m["precision_fp32_img_per_s"] == rec["fp32_img_per_s"]
    assert m["precision_bf16_img_per_s"] == rec["bf16_img_per_s"]
    assert m["precision_source"] == "probe" and rec["key"]["arch"] == params["teacher"]["arch"]
    run = mlflow.MlflowClient(uri).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(uri).search_experiments()],
        filter_string="tags.precision != ''",
    )
    assert len(run) == 1 and run[0].data.tags["precision"] == rec["precision"]
    assert run[0].data.metrics["precision_fp32_img_per_s"] == pytest.approx(rec["fp32_img_per_s"])
    assert run[0].data.metrics["precision_bf16_img_per_s"] == pytest.approx(rec["bf16_img_per_s"])
