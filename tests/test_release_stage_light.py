"""The release stages of a profile without releases (the default): exact empty outputs, and no
torch, timm or MLflow import, so the 11 no-op stages of every ``dvc repro`` start in about a second."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nsp.config import baseline_name, generation_of, model_names
from nsp.errors import NSPError
from nsp.robustness import release_stage as S

PARAMS = {"generations": {"g1": {}, "g2": {}}, "evaluate": {"baseline": "g2"}, "robustness": {}}

CHILD = """
import json, sys
from pathlib import Path
from nsp.robustness import release_stage as S
params = json.loads(sys.argv[2])
out = Path(sys.argv[1])
S.run_release_list(params, out=out)
ev = S.run_release_eval(params, "g1", out=out)
S.run_release_metrics(params, "g1", out=out)
print(json.dumps({"eval": ev, "loaded": sorted(m for m in ("torch", "timm", "mlflow") if m in sys.modules)}))
"""


def test_params_helpers_on_a_worked_example():
    assert model_names(PARAMS) == ["teacher", "g1", "g2", "baseline"]
    assert [generation_of(PARAMS, m) for m in model_names(PARAMS)] == [0, 1, 2, -1]
    assert baseline_name(PARAMS) == "g2" and baseline_name({}) == "baseline"


def test_no_release_stages_write_empty_outputs_without_heavy_imports(tmp_path):
    res = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), json.dumps(PARAMS)],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    assert json.loads(res.stdout) == {"eval": {}, "loaded": []}
    rel = tmp_path / "releases"
    assert json.loads((rel / "listing.json").read_text()) == {"releases": {}, "alexnet_p": None}
    assert json.loads((rel / "raw/g1/index.json").read_text()) == {"model": "g1", "releases": []}
    assert json.loads((rel / "g1.metrics.json").read_text()) == {
        "model": "g1", "normalised_by": "g2", "protocols": {}, "releases": {},
    }  # fmt: skip


def test_unknown_model_is_refused_before_anything_is_written(tmp_path):
    S.run_release_list(PARAMS, out=tmp_path)
    with pytest.raises(NSPError, match="unknown model 'g3'; use one of teacher, g1, g2, baseline"):
        S.run_release_eval(PARAMS, "g3", out=tmp_path)
    assert not (tmp_path / "releases/raw/g3").exists()
