"""Optuna studies over noise strengths, pseudo-label threshold/balancing and student size.

``studies/<name>.yaml`` -> :func:`load_spec`; :func:`run_study` / :func:`run_worker` run trials
(each a student trained from the fixed teacher's pseudo labels); :func:`show_study` and
:func:`apply_trial` read results back. MLflow is reached only through :mod:`nsp.tracking.studies`.
"""

from nsp.study.results import apply_trial, show_study
from nsp.study.runner import run_study, run_worker, tally
from nsp.study.spec import StudySpec, check_against_params, load_spec, parse_spec

__all__ = [
    "StudySpec",
    "apply_trial",
    "check_against_params",
    "load_spec",
    "parse_spec",
    "run_study",
    "run_worker",
    "show_study",
    "tally",
]
