"""Behaviour-neutral changes stay byte-identical: the tiny profile's stage outputs (fp32, one thread)
equal the digests recorded in ``tests/data/golden_digests.json`` (see ``tests/golden.py``).

A change that is meant to alter what a stage writes re-records them (``python tests/golden.py
--record``) in the same commit, and says so. The record names the CPU model and torch version it was
made on; fp32 kernels may round differently on another CPU, so elsewhere the test skips with that reason.
"""

from __future__ import annotations

import json

import pytest

from tests.golden import RECORD, compute, machine_key


def test_tiny_profile_outputs_equal_the_recorded_digests():
    rec = json.loads(RECORD.read_text())
    if rec["machine"] != machine_key():
        pytest.skip(f"digests recorded on {rec['machine']}, this is {machine_key()}")
    now = compute()
    changed = sorted(k for k in rec["digests"].keys() & now.keys() if rec["digests"][k] != now[k])
    assert sorted(now) == sorted(rec["digests"]), "the set of output files changed"
    assert changed == [], f"outputs differ from the record: {changed}"
