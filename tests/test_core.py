"""Noisy Student core: balancing, pseudo-label targets, models, noise switches, size check."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

import nsp.models  # noqa: F401  (registers nsp_* in timm)
from nsp.config import PseudoConfig
from nsp.errors import NSPError
from nsp.models import count_params
from nsp.pseudo.balance import class_histogram, class_thresholds, copy_counts, threshold_grid
from nsp.pseudo.label import build_pseudo_label_set, load_pseudo_label_set, soft_targets


def test_threshold_grid():
    g = threshold_grid(0.3)
    assert g[0] == 0.3 and g[-1] == 1.0 and len(g) == 71
    assert np.allclose(np.diff(g), 0.01)


def _balance(labels, conf, *, per_class, threshold=0.3, seed=0, k=3):
    grid = threshold_grid(threshold)
    hist = class_histogram(np.asarray(labels), np.asarray(conf), grid, k)
    thr, above = class_thresholds(hist, grid, per_class)
    counts = copy_counts(
        index=np.arange(len(labels)),
        labels=np.asarray(labels),
        conf=np.asarray(conf),
        thresholds=thr,
        counts_above=above,
        per_class=per_class,
        seed=seed,
        balance=True,
        threshold=threshold,
    )
    return thr, above, counts


def test_balancing_hand_computed_downsample_and_duplicate():
    # class 0: 6 images; per_class=3 -> highest 0.01-threshold keeping >= 3 images is 0.80
    #          (conf >= 0.80: 0.95, 0.90, 0.80) -> each kept exactly once (3/3 = 1)
    # class 1: 2 images above 0.3 -> threshold stays 0.30, each duplicated 3/2 = 1.5 times
    #          (floor 1 + Bernoulli(0.5))
    # class 2: one image below threshold -> nothing kept
    labels = [0, 0, 0, 0, 0, 0, 1, 1, 1, 2]
    conf = [0.95, 0.90, 0.80, 0.79, 0.50, 0.31, 0.60, 0.40, 0.20, 0.25]
    thr, above, counts = _balance(labels, conf, per_class=3)
    assert thr[0] == pytest.approx(0.80) and above[0] == 3
    assert thr[1] == pytest.approx(0.30) and above[1] == 2
    assert above[2] == 0
    assert counts[:6].tolist() == [1, 1, 1, 0, 0, 0]
    assert set(counts[6:8].tolist()) <= {1, 2} and counts[8] == 0 and counts[9] == 0


def test_balancing_duplication_counts_are_stochastic_rounding():
    # one class, 4 images above threshold, per_class=10 -> ratio 2.5: each gets 2 or 3 copies,
    # and over many seeds the mean is 2.5
    labels = [0, 0, 0, 0]
    conf = [0.9, 0.8, 0.7, 0.6]
    totals = []
    for seed in range(400):
        _, _, counts = _balance(labels, conf, per_class=10, seed=seed, k=1)
        assert set(counts.tolist()) <= {2, 3}
        totals.append(counts.mean())
    assert np.mean(totals) == pytest.approx(2.5, abs=0.05)


def test_balancing_off_is_plain_threshold():
    labels = np.array([0, 1, 1])
    conf = np.array([0.5, 0.2, 0.99])
    counts = copy_counts(
        index=np.arange(3),
        labels=labels,
        conf=conf,
        thresholds=np.zeros(2),
        counts_above=np.zeros(2),
        per_class=5,
        seed=0,
        balance=False,
        threshold=0.3,
    )
    assert counts.tolist() == [1, 0, 1]


def test_soft_hard_and_smoothed_targets():
    p = np.array([[0.7, 0.2, 0.1]], np.float32)
    assert np.allclose(soft_targets(p, soft=True, label_smoothing=0), p)
    assert np.allclose(soft_targets(p, soft=False, label_smoothing=0), [[1, 0, 0]])
    assert np.allclose(soft_targets(p, soft=False, label_smoothing=0.3), [[0.8, 0.1, 0.1]])


class _FixedLogits(torch.nn.Module):
    """A 'teacher' whose logits are the first 3 pixels of each image (so the expected set is known)."""

    def forward(self, x):
        return x.flatten(1)[:, :3].float()


def test_pseudo_label_set_temperature_threshold_and_stats(tmp_path):
    logits = np.array([[4, 0, 0], [0, 3, 0], [1, 1, 1.2], [0, 0, 5]], np.float32)
    images = np.zeros((4, 2, 2, 1), np.float32)
    images.reshape(4, -1)[:, :3] = logits
    truth = np.array([0, 1, 0, 2])
    for temp in (1.0, 2.0):
        cfg = PseudoConfig(
            soft=True,
            temperature=temp,
            threshold=0.5,
            balance=False,
            topk=3,
            batch_size=3,
            shard_size=2,
        )
        out = tmp_path / f"set{temp}"
        stats = build_pseudo_label_set(
            model=_FixedLogits(),
            get_batch=lambda i: images[i],
            n=4,
            num_classes=3,
            cfg=cfg,
            out_dir=out,
            truth=truth,
            progress=False,
        )
        probs = torch.softmax(torch.from_numpy(logits) / temp, 1).numpy()
        keep = torch.softmax(torch.from_numpy(logits), 1).numpy().max(1) >= 0.5  # T = 1 filters
        s = load_pseudo_label_set(out, 3)
        assert s["index"].tolist() == np.flatnonzero(keep).tolist()
        assert np.allclose(s["targets"], probs[keep], atol=1e-6)  # T shapes the targets
        assert stats["num_unlabeled"] == 4 and stats["stream_size"] == keep.sum()
        kept_correct = (probs.argmax(1) == truth)[keep]
        assert stats["pseudo_label_acc"] == pytest.approx(kept_correct.mean())
        assert sorted(p.name for p in out.iterdir()) == [
            "provenance.json",
            "shard-00000.parquet",
            "shard-00001.parquet",
            "stats.json",
        ]


def _label_set(tmp_path, logits, *, temperature, balance, soft=True):
    images = np.zeros((len(logits), 2, 2, 1), np.float32)
    images.reshape(len(logits), -1)[:, :3] = logits
    cfg = PseudoConfig(soft=soft, temperature=temperature, threshold=0.4, balance=balance,
                       per_class=1, topk=3, batch_size=8, shard_size=8)  # fmt: skip
    out = tmp_path / f"set-{temperature}-{balance}-{soft}"
    stats = build_pseudo_label_set(model=_FixedLogits(), get_batch=lambda i: images[i], n=len(logits),
                                   num_classes=3, cfg=cfg, out_dir=out, progress=False)  # fmt: skip
    return stats, load_pseudo_label_set(out, 3)


def test_temperature_sharpens_targets_but_filtering_and_balancing_use_t1(tmp_path):
    """Official order: filter and balance on the T = 1 probabilities, then apply T to the targets.

    Rows (threshold 0.4): A [4,0,0] conf 0.965 at T=1; B [1,1,1.2] conf 0.379 at T=1 but 0.427 at
    T=0.5; C [0,0,5] 0.987; D [0.5,0,0] 0.452 at T=1 but 0.391 at T=2. Filtering on T=0.5 would keep
    B, on T=2 would drop D: NSP keeps A, C, D for every T.
    """
    logits = np.array([[4, 0, 0], [1, 1, 1.2], [0, 0, 5], [0.5, 0, 0]], np.float32)
    t1 = torch.softmax(torch.from_numpy(logits), 1).numpy()
    assert (t1.max(1) >= 0.4).tolist() == [True, False, True, True]
    for temp, old_rule in ((0.5, [0, 1, 2, 3]), (2.0, [0, 2])):
        sharp = torch.softmax(torch.from_numpy(logits) / temp, 1).numpy()
        assert np.flatnonzero(sharp.max(1) >= 0.4).tolist() == old_rule  # the case discriminates
        _, s = _label_set(tmp_path, logits, temperature=temp, balance=False)
        assert s["index"].tolist() == [0, 2, 3]
        assert np.allclose(s["targets"], sharp[[0, 2, 3]], atol=1e-6)
        assert not np.allclose(s["targets"], t1[[0, 2, 3]], atol=1e-3)  # really sharpened/softened
        # balancing (per_class 1): class thresholds from T = 1 confidences (A 0.965 -> 0.96,
        # C 0.987 -> 0.98, class 1 empty -> base 0.40); on T = 0.5 they would be 0.99 and 0.99
        stats, s = _label_set(tmp_path, logits, temperature=temp, balance=True)
        assert stats["class_thresholds"] == pytest.approx([0.96, 0.40, 0.98])
        assert s["index"].tolist() == [0, 2] and s["counts"].tolist() == [1, 1]
        assert np.allclose(s["targets"], sharp[[0, 2]], atol=1e-6)
    # hard targets ignore T (argmax of the T = 1 probabilities)
    _, s = _label_set(tmp_path, logits, temperature=0.5, balance=False, soft=False)
    assert s["targets"].tolist() == [[1, 0, 0], [0, 0, 1], [1, 0, 0]]


@pytest.mark.parametrize("name", ["nsp_resnet_xs", "nsp_resnet_s", "nsp_resnet_m", "nsp_resnet_l"])
def test_models_registered_in_timm(name):
    m = timm.create_model(name, num_classes=7, in_chans=1, drop_rate=0.1, drop_path_rate=0.2)
    assert m(torch.zeros(2, 1, 32, 32)).shape == (2, 7)


def test_family_sizes_grow():
    sizes = [
        count_params(timm.create_model(n, num_classes=10, in_chans=1))
        for n in ("nsp_resnet_s", "nsp_resnet_m", "nsp_resnet_l")
    ]
    assert sizes[0] < sizes[1] < sizes[2]


def test_dropout_and_stochastic_depth_only_in_train_mode():
    torch.manual_seed(0)
    m = timm.create_model(
        "nsp_resnet_s", num_classes=10, in_chans=1, drop_rate=0.5, drop_path_rate=0.5
    )
    for mod in m.modules():  # make residual branches non-zero so stochastic depth is visible
        if isinstance(mod, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(mod.weight)
    x = torch.randn(4, 1, 32, 32)
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(x), m(x))
    m.train()
    with torch.no_grad():
        assert not torch.allclose(m(x), m(x))
    rates = [b.drop_path.drop_prob for b in m.blocks if hasattr(b.drop_path, "drop_prob")]
    assert rates == sorted(rates) and rates[-1] == pytest.approx(0.5)  # linear in block index


def test_unknown_arch_is_clear_error():
    from nsp.models import build_model

    with pytest.raises(NSPError, match="unknown architecture 'nsp_nope'"):
        build_model(arch="nsp_nope", num_classes=10, in_chans=1)


def test_config_rejects_out_of_range_and_unknown_keys():
    from nsp import config as C

    params = {
        "student": {"pseudo": {"threshold": 1.5}},
        "generations": {"g1": {"arch": "nsp_resnet_s", "unlabeled_ratio": 2}},
    }
    with pytest.raises(NSPError, match=r"generations.g1.pseudo.threshold must be in \[0, 1\]"):
        C.pseudo_config(params, "g1")
    with pytest.raises(NSPError, match="unknown key teacher.epoch"):
        C.teacher_config({"teacher": {"epoch": 3}})
    with pytest.raises(NSPError, match="teacher.epochs must be > 0"):
        C.teacher_config({"teacher": {"epochs": -1}})
    with pytest.raises(NSPError, match="unlabeled_ratio must be > 0"):
        C.student_config({"generations": {"g1": {"unlabeled_ratio": 0}}}, "g1")
    with pytest.raises(NSPError, match="generations.g2.teacher='g5' does not exist"):
        C.teacher_of({"generations": {"g1": {}, "g2": {"teacher": "g5"}}}, "g2")


@pytest.mark.parametrize("value", ["half", -1, True, float("nan")])
def test_config_unlabeled_weight_is_ratio_or_a_number(value):
    from nsp import config as C

    def student(**kw):
        return C.student_config({"generations": {"g1": {"unlabeled_ratio": 3, **kw}}}, "g1")

    assert student(unlabeled_weight="ratio").unlabeled_weight_value() == 3.0
    assert student(unlabeled_weight=0.5).unlabeled_weight_value() == 0.5
    assert student().unlabeled_weight_value() == 1.0  # default: the paper's equation
    msg = "params.yaml: g1.unlabeled_weight must be 'ratio' or a number >= 0; fix the value"
    with pytest.raises(NSPError, match=msg) as err:
        student(unlabeled_weight=value)
    assert "\n" not in str(err.value)
    with pytest.raises(NSPError, match="g1.noise.recipe must be one of nsp, official"):
        student(noise={"recipe": "paper"})
    with pytest.raises(NSPError, match="g1.smooth_pseudo_labels needs label_smoothing > 0"):
        student(smooth_pseudo_labels=True)


def test_growing_s_to_m_to_l_preserves_the_function():
    from nsp.models.resnet import grow_state_dict
    from nsp.train.engine import make_classifier

    torch.manual_seed(0)
    teacher = make_classifier(arch="nsp_resnet_s", num_classes=10, in_chans=1).eval()
    for mod in teacher.modules():  # a non-trivial teacher (zero-init BN would hide mistakes)
        if isinstance(mod, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(mod.weight, 0.5, 1.5)
            torch.nn.init.uniform_(mod.bias, -0.1, 0.1)
    x = torch.randint(0, 256, (4, 1, 32, 32)).float()
    prev, prev_arch = teacher, "nsp_resnet_s"
    for arch in ("nsp_resnet_m", "nsp_resnet_l"):
        student = make_classifier(arch=arch, num_classes=10, in_chans=1).eval()
        student.load_state_dict(
            grow_state_dict(
                prev.state_dict(),
                teacher_arch=prev_arch,
                student_state=student.state_dict(),
                student_arch=arch,
                prefix="net.",
            )
        )
        assert count_params(student) > count_params(prev)
        assert torch.allclose(student(x), teacher(x), atol=1e-5)
        prev, prev_arch = student, arch
    with pytest.raises(ValueError, match="cannot grow nsp_resnet_xs into nsp_resnet_s"):
        grow_state_dict(
            make_classifier(arch="nsp_resnet_xs", num_classes=10, in_chans=1).state_dict(),
            teacher_arch="nsp_resnet_xs",
            student_state=teacher.state_dict(),
            student_arch="nsp_resnet_s",
            prefix="net.",
        )


def test_bf16_training_learns_and_keeps_fp32_weights():
    """precision: bf16 autocasts the forward only: weights stay fp32 and the model still learns."""
    from nsp.config import NoiseConfig, TrainConfig
    from nsp.train.engine import train_model, use_bf16

    g = torch.Generator().manual_seed(0)
    y = torch.arange(256) % 2
    x = torch.randint(0, 60, (256, 1, 32, 32), generator=g, dtype=torch.uint8)
    x[y == 1, :, 8:24, 8:24] += 150  # class 1: a bright square
    cfg = TrainConfig(
        name="t",
        arch="nsp_resnet_xs",
        epochs=4,
        batch_size=32,
        lr=0.05,
        ema_decay=0.0,
        precision="bf16",
        noise=NoiseConfig(randaugment=False, crop_flip=False, dropout=0.0, drop_path=0.0),
    )
    out = train_model(
        cfg=cfg, labeled_x=x, labeled_y=y, val_x=x, val_y=y, num_classes=2, progress=False
    )
    assert out["metrics"]["bf16"] is True and out["metrics"]["val_acc"] >= 0.9
    assert all(p.dtype == torch.float32 for p in out["model"].parameters())
    assert use_bf16("fp32", torch.device("cpu")) is False


def test_bad_precision_is_a_clear_error():
    from nsp.config import TrainConfig

    with pytest.raises(NSPError, match="params.yaml: student.precision must be fp32, bf16 or auto"):
        TrainConfig(name="student", precision="fp16").validate()


def test_predict_logits_gives_float32_cpu_logits_and_restores_train_mode():
    """Callers call ``.numpy()`` on the result: a CUDA or bf16 tensor there broke the GPU run."""
    from nsp.train.engine import predict_logits

    class Half(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)[:, :3].to(torch.bfloat16)

    net = Half().train()
    x = torch.arange(2 * 1 * 2 * 2, dtype=torch.uint8).reshape(2, 1, 2, 2)
    out = predict_logits(net, x, batch_size=1)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert out.tolist() == [[0.0, 1.0, 2.0], [4.0, 5.0, 6.0]]
    assert net.training


def test_grown_student_init_depends_only_on_its_seed():
    """The new blocks' weights of a grown student came from the unseeded global RNG: the same
    generation trained twice (same seed) differed by up to 0.4 points of test accuracy."""
    from nsp.student import init_from_teacher
    from nsp.train.engine import make_classifier

    teacher = {
        "arch": "nsp_resnet_s",
        "state_dict": make_classifier(arch="nsp_resnet_s", num_classes=10, in_chans=1).state_dict(),
    }

    def grown(seed: int) -> dict[str, torch.Tensor]:
        return init_from_teacher(
            teacher, arch="nsp_resnet_m", num_classes=10, in_chans=1, seed=seed, where="g2"
        )

    torch.manual_seed(1)
    a = grown(7)
    torch.manual_seed(2)  # another global RNG state
    b, c = grown(7), grown(8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the seed does matter
    torch.manual_seed(1)
    expect = torch.rand(3)
    torch.manual_seed(1)
    grown(7)
    assert torch.equal(torch.rand(3), expect)  # and the global RNG is left as it was
