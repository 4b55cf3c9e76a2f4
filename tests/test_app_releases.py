"""Dashboard pages switching between the generated sets and the official releases found under
``outputs/releases`` (real Streamlit AppTest; the outputs written by the real release runners)."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from nsp.io import write_json  # noqa: E402
from nsp.robustness.release_eval import evaluate_release  # noqa: E402
from nsp.robustness.release_stage import (  # noqa: E402
    raw_release_path,
    run_release_list,
    run_release_metrics,
)
from nsp.robustness.wnids import IMAGENET_WNIDS  # noqa: E402
from tests.release_fixtures import ColourModel, write_imagenet_c, write_imagenet_p  # noqa: E402

PAGES = Path(__file__).resolve().parents[1] / "app" / "pages"
W = IMAGENET_WNIDS[6], IMAGENET_WNIDS[11], IMAGENET_WNIDS[13]
VALUES = dict(zip(W, (50.0, 128.0, 205.0), strict=True))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("apprel")
    write_imagenet_c(tmp / "C", VALUES, per_class=1, size=16)
    write_imagenet_p(tmp / "P", VALUES, per_class=1, frames=4, size=16)
    root = tmp / "proj"
    out = root / "outputs"
    params = {
        "tracking": {"enabled": False},
        "generations": {"g1": {"teacher": "teacher"}},
        "evaluate": {"baseline": "baseline"},
        "robustness": {"releases": {"imagenet_c": str(tmp / "C"), "imagenet_p": str(tmp / "P")}},
    }
    listing = run_release_list(params, out=out)
    for k, model in enumerate(("teacher", "g1", "baseline")):
        centres = {IMAGENET_WNIDS.index(w): v + 20 * k for w, v in VALUES.items()}
        for release in ("imagenet_c", "imagenet_p"):
            raw = evaluate_release(
                release=release, root=listing["releases"][release]["root"], model=ColourModel(1000, centres),
                class_names=IMAGENET_WNIDS, image_size=16, channels=3, workers=1,
            )  # fmt: skip
            raw.update(listing_digest=listing["releases"][release]["digest"], precision="fp32")
            write_json(raw_release_path(model, release, out), raw)
    for model in ("teacher", "g1", "baseline"):
        run_release_metrics(params, model, out=out)
    return root


def open_page(name: str, root: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("NSP_PROJECT_ROOT", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    return AppTest.from_file(str(PAGES / name), default_timeout=120).run()


def _metrics(root: Path, model: str) -> dict:
    return json.loads((root / "outputs" / "releases" / f"{model}.metrics.json").read_text())


def test_corruptions_page_switches_to_imagenet_c(project, monkeypatch):
    at = open_page("2_Corruptions.py", project, monkeypatch)
    sel = at.selectbox(key="corr_source")
    assert sel.value == "generated sets" and sel.options == ["generated sets", "ImageNet-C"]
    sel.set_value("imagenet_c").run()
    assert not at.exception
    assert any("normalised by AlexNet" in c.value and "1000 classes" in c.value for c in at.caption)
    table = at.dataframe[0].value  # AppTest exposes no dataframe keys
    for model in ("teacher", "g1", "baseline"):
        m = _metrics(project, model)
        assert table.loc["mCE", model] == pytest.approx(m["imagenet_c_mce"], abs=1e-12)
        assert table.loc["fog", model] == pytest.approx(m["releases"]["imagenet_c"]["ce"]["fog"])


def test_perturbations_page_switches_to_imagenet_p(project, monkeypatch):
    at = open_page("3_Perturbations.py", project, monkeypatch)
    at.selectbox(key="pert_source").set_value("imagenet_p").run()
    assert not at.exception
    assert any("flip probability" in c.value for c in at.caption)
    table = at.dataframe[0].value
    raw = json.loads((project / "outputs/releases/raw/g1/imagenet_p.json").read_text())
    assert np.allclose([table.loc[f, "g1"] for f in raw["fp"]], list(raw["fp"].values()))


def test_generations_page_lists_release_summary(project, monkeypatch):
    at = open_page("1_Generations.py", project, monkeypatch)
    assert at.selectbox(key="gen_source").options == ["generated sets", "ImageNet-C", "ImageNet-P"]
    at.selectbox(key="gen_source").set_value("imagenet_c").run()
    assert not at.exception
    df = at.dataframe[0].value
    assert df["model"].tolist() == ["teacher", "g1", "baseline"]
    assert df["mce"].tolist() == pytest.approx(
        [_metrics(project, m)["imagenet_c_mce"] for m in df["model"]]
    )
    assert df["mce_baseline"].tolist()[-1] == pytest.approx(1.0)
