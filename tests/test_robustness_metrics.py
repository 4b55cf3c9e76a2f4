"""Robustness metrics against the reference worked examples and hand-computed cases."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from nsp.errors import NSPError
from nsp.robustness import metrics as M

REF = Path(
    os.environ.get(
        "NSP_REFERENCE_DIR", Path(__file__).resolve().parents[2] / "shared" / "reference"
    )
)


def _ref(name: str):
    path = REF / name
    if not path.is_file():
        pytest.skip(f"reference oracle {path} not available")
    return np.load(path)


# ------------------------------------------------------------------------------------------
# reference oracles
# ------------------------------------------------------------------------------------------


def test_ce_metrics_match_reference():
    d = _ref("ce_metrics.npz")
    names = [str(c) for c in d["corruption_names"]]
    assert tuple(names) == M.CORRUPTIONS
    ce = M.corruption_errors(d["model_err"], d["baseline_err"])
    np.testing.assert_allclose(ce.ce, d["ce"], rtol=0, atol=1e-12)
    assert abs(ce.mce - float(d["mce"])) <= 1e-12
    rel = M.relative_corruption_errors(
        d["model_err"],
        d["baseline_err"],
        model_clean_err=float(d["model_clean_err"]),
        baseline_clean_err=float(d["baseline_clean_err"]),
    )
    np.testing.assert_allclose(rel.ce, d["rel_ce"], rtol=0, atol=1e-12)
    assert abs(rel.mce - float(d["rel_mce"])) <= 1e-12


def test_alexnet_normalised_ce_match_reference():
    d = _ref("ce_metrics.npz")
    names = [str(c) for c in d["corruption_names"]]
    np.testing.assert_allclose([M.ALEXNET_ERR[c] for c in names], d["alexnet_err"], atol=1e-12)
    assert M.ALEXNET_CLEAN_ERR == pytest.approx(float(d["alexnet_clean_err"]), abs=1e-12)
    a = M.alexnet_corruption_errors(d["model_err"], corruption_names=names)
    np.testing.assert_allclose(a.ce, d["alexnet_ce"], rtol=0, atol=1e-12)
    assert abs(a.mce - float(d["alexnet_mce"])) <= 1e-12
    r = M.alexnet_relative_corruption_errors(
        d["model_err"], model_clean_err=float(d["model_clean_err"]), corruption_names=names
    )
    np.testing.assert_allclose(r.ce, d["alexnet_rel_ce"], rtol=0, atol=1e-12)
    assert abs(r.mce - float(d["alexnet_rel_mce"])) <= 1e-12


def test_flip_probability_top5_and_zipf_match_reference():
    d = _ref("pmetrics.npz")
    n_cases = int(d["num_cases"])
    assert n_cases == 12
    for c in range(n_cases):
        k = f"case{c}_"
        logits = d[k + "logits"]
        noise, diff = bool(d[k + "noise"]), int(d[k + "difficulty"])
        assert logits.shape[-1] == int(d[k + "num_classes"])
        fp = M.flip_probability(logits.argmax(-1), noise=noise, difficulty=diff)
        assert abs(fp - float(d[k + "fp"])) <= 1e-9, c
        assert abs(M.flip_probability(logits, noise=noise, difficulty=diff) - fp) == 0
        t5d = M.top5_distance(logits, noise=noise, difficulty=diff)
        assert abs(t5d - float(d[k + "t5d"])) <= 1e-9, c
        zipf = M.zipf_distance(logits, noise=noise, difficulty=diff)
        assert abs(zipf - float(d[k + "zipf"])) <= 1e-9, c


def test_rank_distance_chunking_does_not_change_result():
    d = _ref("pmetrics.npz")
    logits = d["case11_logits"]
    full = M._rank_distance(logits, noise=False, difficulty=2, mode="top5")
    tiny = M._rank_distance(logits, noise=False, difficulty=2, mode="top5", chunk_elems=1)
    assert full == pytest.approx(tiny, abs=1e-12)
    assert full == pytest.approx(float(d["case11_t5d"]), abs=1e-9)


def test_calibration_errors_match_reference():
    d = _ref("calibration.npz")
    assert int(d["beta"]) == 100
    for c in range(int(d["num_cases"])):
        k = f"case{c}_"
        conf, corr = d[k + "confidence"], d[k + "correct"]
        rms = M.calibration_error(conf, corr, p="2", beta=100)
        assert abs(rms - float(d[k + "rms_calib_err"])) <= 1e-12, c
        assert M.rms_calibration_error(conf, corr) == rms
        l1 = M.calibration_error(conf, corr, p="1")
        assert abs(l1 - float(d[k + "l1_calib_err"])) <= 1e-12, c
        mx = M.calibration_error(conf, corr, p="infty")
        assert abs(mx - float(d[k + "max_calib_err"])) <= 1e-12, c
        # the reference skips the last bin; the all-bins value is different
        assert abs(rms - float(d[k + "rms_calib_err_all_bins"])) > 5e-6
        every = M.calibration_error(conf, corr, p="2", beta=100, skip_last=False)
        assert abs(every - float(d[k + "rms_calib_err_all_bins"])) <= 1e-12, c
        if len(conf) == 1000:  # 10 adaptive bins of 1000 // 10 = 100: the same binning
            adaptive = M.adaptive_calibration_error(conf, corr, bins=10)
            assert abs(adaptive - float(d[k + "rms_calib_err_all_bins"])) <= 1e-12, c


# ------------------------------------------------------------------------------------------
# hand-computed examples (no reference needed)
# ------------------------------------------------------------------------------------------


def test_error_rate_accuracy_and_error_table():
    labels = np.array([0, 1, 2, 3])
    preds = np.array([[[0, 1, 2, 3], [0, 0, 2, 3]], [[1, 1, 1, 1], [3, 2, 1, 0]]])
    np.testing.assert_allclose(M.error_rate(preds, labels), [[0.0, 0.25], [0.75, 1.0]])
    assert M.error_rate(np.array([0, 1, 1]), np.array([0, 1, 2])) == pytest.approx(1 / 3)
    assert M.accuracy(np.array([0, 1, 1, 1]), np.array([0, 1, 2, 3])) == pytest.approx(0.5)
    table = M.error_table(
        {"a": {1: preds[0, 0], 2: preds[0, 1]}, "b": preds[1]},
        labels,
        corruptions=("a", "b"),
        severities=(1, 2),
    )
    np.testing.assert_allclose(table, [[0.0, 0.25], [0.75, 1.0]])
    with pytest.raises(NSPError, match="logits.argmax"):
        M.error_rate(np.zeros((4, 3)), labels)
    with pytest.raises(NSPError, match="no entry for corruption 'c'"):
        M.error_table({"a": preds[0]}, labels, corruptions=("a", "c"), severities=(1, 2))


def test_corruption_errors_by_hand():
    model = np.array([[0.1, 0.2], [0.3, 0.3]])
    base = np.array([[0.2, 0.2], [0.3, 0.9]])
    ce, mce = M.corruption_errors(model, base)
    np.testing.assert_allclose(ce, [0.3 / 0.4, 0.6 / 1.2])
    assert mce == pytest.approx(0.625)
    rel = M.relative_corruption_errors(model, base, model_clean_err=0.05, baseline_clean_err=0.1)
    # (0.05 + 0.15) / (0.1 + 0.1) = 1.0 ; (0.25 + 0.25) / (0.2 + 0.8) = 0.5
    np.testing.assert_allclose(rel.ce, [1.0, 0.5])
    assert rel.mce == pytest.approx(0.75)
    assert M.mean_corruption_error(model) == pytest.approx(0.225)
    with pytest.raises(NSPError, match="differs from baseline_err"):
        M.corruption_errors(model, base[:1])


def test_alexnet_ce_is_one_for_alexnet_itself():
    a = np.array([M.ALEXNET_ERR[c] for c in M.CORRUPTIONS])
    errs = np.repeat(a[:, None], 5, axis=1)
    res = M.alexnet_corruption_errors(errs)
    np.testing.assert_allclose(res.ce, 1.0)
    rel = M.alexnet_relative_corruption_errors(errs, model_clean_err=M.ALEXNET_CLEAN_ERR)
    np.testing.assert_allclose(rel.ce, 1.0)
    # only the named rows are normalised, in the given order
    two = M.alexnet_corruption_errors([0.5, 0.5], corruption_names=["fog", "brightness"])
    np.testing.assert_allclose(two.ce, [0.5 / 0.819324, 0.5 / 0.564592])
    with pytest.raises(NSPError, match="no AlexNet constant"):
        M.alexnet_corruption_errors([0.5], corruption_names=["saturate"])
    with pytest.raises(NSPError, match="one name per row"):
        M.alexnet_corruption_errors([0.5, 0.4], corruption_names=["fog"])


def test_flip_probability_by_hand():
    preds = np.array([[0, 0, 1, 0, 2]])
    assert M.flip_probability(preds, noise=False, difficulty=1) == pytest.approx(0.75)
    assert M.flip_probability(preds, noise=True) == pytest.approx(0.5)
    # difficulty 2: pairs (0,2) (1,3) (2,4) -> flips 1, 0, 1
    assert M.flip_probability(preds, noise=False, difficulty=2) == pytest.approx(2 / 3)
    a, b = M.frame_pairs(5, noise=False, difficulty=3)
    assert a.tolist() == [0, 1] and b.tolist() == [3, 4]
    a, b = M.frame_pairs(4, noise=True, difficulty=3)
    assert a.tolist() == [0, 0, 0] and b.tolist() == [1, 2, 3]
    assert M.is_noise_perturbation("shot_noise_2") and not M.is_noise_perturbation("scale")
    with pytest.raises(NSPError, match="difficulty=5"):
        M.flip_probability(preds, noise=False, difficulty=5)
    with pytest.raises(NSPError, match="sequences, frames"):
        M.flip_probability(np.array([0, 1, 1]), noise=True)


def test_top5_and_zipf_distance_by_hand():
    base = np.array([6.0, 5, 4, 3, 2, 1])  # ranking 0,1,2,3,4,5
    swap01 = np.array([5.0, 6, 4, 3, 2, 1])  # classes 0 and 1 swapped
    new_top = np.array([6.0, 5, 4, 3, 2, 7])  # class 5 jumps to rank 1
    seq = np.stack([base, swap01])[None]
    # c = (0,1,2,3,4) ranks in frame b = (2,1,3,4,5): |0-1| + |1-0| = 2
    assert M.top5_distance(seq, noise=False) == pytest.approx(2.0)
    # zipf: j=1 -> sigma 2: |1 - 1/2| * 1 ; j=2 -> sigma 1: |1/2 - 1| * 1/2
    assert M.zipf_distance(seq, noise=False) == pytest.approx(0.75)
    seq2 = np.stack([base, new_top])[None]
    # ranks of classes 0..4 in b are 2..6 -> min(r-1, 5) = 1..5 vs 0..4 -> 5
    assert M.top5_distance(seq2, noise=True) == pytest.approx(5.0)
    # consecutive (a, b), (b, c) vs. noise (a, b), (a, c)
    seq3 = np.stack([base, swap01, base])[None]
    assert M.top5_distance(seq3, noise=False) == pytest.approx(2.0)
    assert M.top5_distance(seq3, noise=True) == pytest.approx(1.0)
    # ties break towards the lower class index, like rankdata(method='ordinal')
    tied = np.stack([np.zeros(6), base])[None]
    assert M.top5_distance(tied, noise=True) == pytest.approx(0.0)
    with pytest.raises(NSPError, match="at least 5"):
        M.top5_distance(np.zeros((1, 2, 4)), noise=True)


def test_flip_and_t5d_rates():
    fr = M.flip_rates([0.1, 0.2], [0.2, 0.8])
    np.testing.assert_allclose(fr.ce, [0.5, 0.25])
    assert fr.mce == pytest.approx(0.375)
    # several difficulties are summed per perturbation
    fr2 = M.flip_rates([[0.1, 0.3]], [[0.2, 0.6]])
    np.testing.assert_allclose(fr2.ce, [0.5])
    t5 = M.top5_distance_rates([2.0, 3.0], [4.0, 3.0])
    np.testing.assert_allclose(t5.ce, [0.5, 1.0])
    assert t5.mce == pytest.approx(0.75)


def _calibration_case(rng: np.random.Generator, tail_correct: np.ndarray) -> tuple:
    i = np.arange(100)
    conf = np.concatenate([0.2 + 0.2 * i / 99, 0.5 + 0.2 * i / 99, 0.8 + 0.2 * i / 99])
    correct = np.zeros(300, dtype=bool)
    correct[:10] = True  # bin 0: confidence 0.3, accuracy 0.1
    correct[100:190] = True  # bin 1: confidence 0.6, accuracy 0.9
    correct[200:] = tail_correct  # last bin: skipped
    perm = rng.permutation(300)
    return conf[perm], correct[perm]


def test_calibration_error_by_hand():
    rng = np.random.default_rng(0)
    conf, corr = _calibration_case(rng, rng.random(100) < 0.5)
    # |0.3 - 0.1| = 0.2 and |0.6 - 0.9| = 0.3, each weighted 100/300
    assert M.calibration_error(conf, corr) == pytest.approx(np.sqrt((0.04 + 0.09) / 3), abs=1e-12)
    assert M.calibration_error(conf, corr, p="1") == pytest.approx(0.5 / 3, abs=1e-12)
    assert M.calibration_error(conf, corr, p="max") == pytest.approx(0.3, abs=1e-12)
    conf2, corr2 = _calibration_case(rng, np.ones(100, dtype=bool))
    assert M.calibration_error(conf2, corr2) == pytest.approx(M.calibration_error(conf, corr))
    # 150 items, beta 100: a single (skipped) bin
    assert M.calibration_error(conf[:150], corr[:150]) == 0.0
    with pytest.raises(NSPError, match="lower beta"):
        M.calibration_error(conf[:50], corr[:50])
    with pytest.raises(NSPError, match="one per example"):
        M.calibration_error(conf, corr[:10])
    with pytest.raises(NSPError, match="p='3'"):
        M.calibration_error(conf, corr, p="3")


def test_adaptive_calibration_counts_all_329_images():
    """An -A set of 329 images: Hendrycks' 100-image bins never look at the 129 most confident;
    15 adaptive bins of 329 // 15 = 21 (the last takes the 14 left over) count every image."""
    rng = np.random.default_rng(3)
    conf = rng.permutation(np.linspace(0.2, 0.99, 329))
    corr = rng.random(329) < conf
    order = np.argsort(conf)
    top129 = order[-129:]
    # by hand: bins of 21 sorted items, the last one 35; weights n_b / 329 sum to 1
    c_s, a_s = conf[order], corr[order].astype(float)
    edges = [*range(0, 14 * 21 + 1, 21), 329]
    sizes = np.diff(edges)
    assert sizes.sum() == 329 and list(sizes) == [21] * 14 + [35]
    hand = sum(
        (hi - lo) / 329 * (c_s[lo:hi].mean() - a_s[lo:hi].mean()) ** 2
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    )
    adaptive = M.adaptive_calibration_error(conf, corr, bins=15)
    assert adaptive == pytest.approx(np.sqrt(hand), abs=1e-12)
    # flipping the correctness of the 129 most confident images moves the adaptive error, and
    # leaves the reference protocol's unchanged (they sit in its skipped last bin)
    flipped = corr.copy()
    flipped[top129] = ~flipped[top129]
    assert M.calibration_error(conf, flipped, beta=100) == M.calibration_error(conf, corr, beta=100)
    assert abs(M.adaptive_calibration_error(conf, flipped, bins=15) - adaptive) > 0.05
    # every single image counts: changing any one image's correctness changes the result
    for i in range(329):
        one = corr.copy()
        one[i] = ~one[i]
        assert M.adaptive_calibration_error(conf, one, bins=15) != adaptive, i
    with pytest.raises(NSPError, match="bins=400"):
        M.adaptive_calibration_error(conf, corr, bins=400)
