"""Loading never runs foreign code: registry versions are rebuilt from safetensors weights + their
resolved config, training states load with ``weights_only=True``, and a pickle with a payload in place
of either is a one-line error that runs nothing (real MLflow sqlite store, real ``nsp`` CLI)."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from nsp.checkpoint import MODEL_CONFIG_FILE, WEIGHTS_FILE, load_safetensors, save_safetensors
from nsp.errors import NSPError
from nsp.train.engine import make_classifier


class _Payload:
    """Unpickling this creates ``marker``: the stand-in for code an attacker wants run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _payload_bytes(marker: Path) -> bytes:
    data = pickle.dumps({"state_dict": _Payload(marker)})
    assert not marker.exists()
    return data


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return make_classifier(arch="nsp_resnet_xs", num_classes=4, in_chans=1, mean=50.0, std=30.0)


def _logits(model: torch.nn.Module) -> np.ndarray:
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16) % 255
    with torch.inference_mode():
        return model.eval()(x).numpy()


def _save(model: torch.nn.Module, d: Path) -> None:
    save_safetensors(d, model=model, arch="nsp_resnet_xs", num_classes=4, in_chans=1,
                     config={"arch": "nsp_resnet_xs", "noise": {"dropout": 0.1, "drop_path": 0.1}},
                     class_names=["a", "b", "c", "d"])  # fmt: skip


def test_safetensors_round_trip_rebuilds_the_same_model(tmp_path):
    model = _model()
    _save(model, tmp_path)
    back, meta = load_safetensors(tmp_path)
    np.testing.assert_array_equal(_logits(back), _logits(model))
    assert meta["normalisation"] == {"mean": 50.0, "std": 30.0}
    assert meta["class_names"] == ["a", "b", "c", "d"] and meta["arch"] == "nsp_resnet_xs"
    assert meta["noise"] == {"dropout": 0.1, "drop_path": 0.1}


def test_a_pickle_in_place_of_the_weights_runs_nothing(tmp_path):
    _save(_model(), tmp_path)
    marker = tmp_path / "PWNED"
    evil = _payload_bytes(marker)
    (tmp_path / WEIGHTS_FILE).write_bytes(evil)
    with pytest.raises(NSPError, match="sha256 differs") as e:
        load_safetensors(tmp_path)
    assert "\n" not in str(e.value) and not marker.exists()
    # an attacker who also rewrites the recorded sha256: still parsed as safetensors, never unpickled
    meta = json.loads((tmp_path / MODEL_CONFIG_FILE).read_text())
    meta["weights_sha256"] = hashlib.sha256(evil).hexdigest()
    (tmp_path / MODEL_CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(NSPError, match="not a safetensors file") as e:
        load_safetensors(tmp_path)
    assert "\n" not in str(e.value) and not marker.exists()
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(NSPError, match="re-register it"):
        load_safetensors(tmp_path)


def test_a_tampered_training_state_is_refused(tmp_path):
    from nsp.config import NoiseConfig, TrainConfig
    from nsp.train.engine import train_model

    x = torch.randint(0, 255, (16, 1, 16, 16), dtype=torch.uint8)
    y = torch.arange(16) % 4
    cfg = TrainConfig(name="t", arch="nsp_resnet_xs", epochs=1, batch_size=8, lr=0.1,
                      warmup_epochs=0, ema_decay=0.0, seed=0, precision="fp32",
                      noise=NoiseConfig(randaugment=False, crop_flip=False))  # fmt: skip
    state = tmp_path / "train_state.pt"
    marker = tmp_path / "PWNED"
    state.write_bytes(_payload_bytes(marker))
    with pytest.raises(NSPError, match="not a loadable NSP training state") as e:
        train_model(cfg=cfg, labeled_x=x, labeled_y=y, val_x=x, val_y=y, num_classes=4,
                    progress=False, state_path=state)  # fmt: skip
    assert "\n" not in str(e.value) and not marker.exists()


def test_registry_pull_rebuilds_from_safetensors_and_refuses_a_tampered_version(
    tmp_path, monkeypatch, capsys
):
    from nsp import tracking
    from nsp.checkpoint import load_checkpoint, model_from_checkpoint
    from nsp.cli import main
    from nsp.tracking.registry import register_model

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params = {"tracking": {"uri": uri}}
    model = _model().eval()  # as a stage registers it (train mode would let BN stats drift)
    ml = tracking.connect(uri)
    ml.set_experiment("safe")
    with ml.start_run() as run:
        register_model(ml, name="safe", model=model, run_id=run.info.run_id, checkpoint_sha256="0" * 64,
                       input_example=np.zeros((1, 1, 16, 16), np.uint8), metrics={"val_acc": 0.5},
                       stage="teacher", generation=0, champion_metric="val_acc", arch="nsp_resnet_xs",
                       config={"arch": "nsp_resnet_xs", "noise": {"dropout": 0.0}},
                       class_names=["a", "b", "c", "d"])  # fmt: skip
    assert main(["registry", "pull", "safe@teacher", "--out", "pulled"]) == 0
    out = capsys.readouterr().out
    assert "runs no code from the registry" in out and "only if you trust" in out
    ckpt = load_checkpoint("pulled/model.pt")
    assert ckpt["class_names"] == ["a", "b", "c", "d"] and ckpt["arch"] == "nsp_resnet_xs"
    np.testing.assert_array_equal(_logits(model_from_checkpoint(ckpt)), _logits(model))
    teacher, mv = tracking.teacher_from_registry(ref="models:/safe@teacher", params=params)
    np.testing.assert_array_equal(_logits(teacher), _logits(model))
    # tamper with the stored version: a pickle with a payload in place of the weights
    stored = [p for p in tmp_path.rglob(f"extra_files/{WEIGHTS_FILE}") if "pulled" not in p.parts]
    assert len(stored) == 1  # the store's copy (under ./mlartifacts of the sqlite store)
    weights = stored[0]
    marker = tmp_path / "PWNED"
    weights.write_bytes(_payload_bytes(marker))
    assert main(["registry", "pull", "safe@teacher", "--out", "pulled2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after MLflow's download progress
    assert (
        err.startswith("nsp registry: error: ")
        and "sha256 differs" in err
        and "nothing was loaded" in err
        and "\n" not in err
    )
    with pytest.raises(NSPError, match="nothing was loaded"):
        tracking.teacher_from_registry(ref="models:/safe@teacher", params=params)
    assert not marker.exists() and not (tmp_path / "pulled2" / "model.pt").exists()


def test_nsp_never_unpickles():
    """No ``torch.load`` without ``weights_only=True``, no ``pickle.load(s)``, no MLflow model load."""
    import ast

    root = Path(__file__).resolve().parents[1] / "nsp"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            name = node.func.attr
            owner = ast.unparse(node.func.value)
            kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if (owner == "torch" and name == "load" and kw.get("weights_only") != "True") or (
                owner == "pickle" and name in ("load", "loads") or name == "load_model"
            ):
                offenders.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    assert not offenders, offenders
