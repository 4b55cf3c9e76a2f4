"""The training step (nsp.train.step): train_model is a loop over it, and the bench times it."""

from __future__ import annotations

import torch

from nsp.config import NoiseConfig, TrainConfig
from nsp.noise.randaugment import (
    OFFICIAL_OPS,
    RandAugmentBatch,
    random_crop_flip,
    random_cutout,
)
from nsp.train.engine import model_for, train_model
from nsp.train.step import InputNoise, PseudoBatchSource, TrainStep


def _setup(seed: int = 3) -> tuple[TrainConfig, dict, PseudoBatchSource]:
    g = torch.Generator().manual_seed(99)
    data = {
        "labeled_x": torch.randint(0, 256, (20, 1, 32, 32), dtype=torch.uint8, generator=g),
        "labeled_y": torch.randint(0, 4, (20,), generator=g),
        "val_x": torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8, generator=g),
        "val_y": torch.randint(0, 4, (8,), generator=g),
    }
    images = torch.randint(0, 256, (40, 1, 32, 32), dtype=torch.uint8, generator=g)
    targets = torch.softmax(torch.randn(64, 4, generator=g), 1)
    pseudo = PseudoBatchSource(
        images=images,
        index=torch.randint(0, 40, (64,), generator=g),
        targets=targets,
        counts=torch.ones(64, dtype=torch.int64),
    )
    noise = NoiseConfig(ra_num_ops=2, ra_magnitude=9, crop_flip=True, dropout=0.2, drop_path=0.1)
    cfg = TrainConfig(name="t", arch="nsp_resnet_xs", epochs=1, batch_size=8, unlabeled_ratio=2,
                      ema_decay=0.0, warmup_epochs=0.5, seed=seed, noise=noise)  # fmt: skip
    return cfg, data, pseudo


def test_bench_step_and_train_model_give_the_same_weights():
    """k steps of TrainStep (next_batch + step, what `nsp bench` times) from the state train_model
    starts in end at exactly train_model's weights (one epoch of k = 4 steps, no EMA, fp32)."""
    torch.set_num_threads(1)
    cfg, d, pseudo = _setup()
    out = train_model(cfg=cfg, num_classes=4, pseudo=pseudo, progress=False, **d)
    assert out["metrics"]["steps"] == 4  # 64 pseudo rows / 16 per step

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = model_for(cfg, labeled_x=d["labeled_x"], num_classes=4)
    ts = TrainStep(cfg=cfg, model=model, labeled_x=d["labeled_x"], labeled_y=d["labeled_y"],
                   gen=gen, device=torch.device("cpu"), pseudo=pseudo)  # fmt: skip
    ts.model.train()
    losses = [ts.step(*ts.next_batch()) for _ in range(ts.total)]
    assert ts.step_no == 4 and all(x["unlabeled"] is not None for x in losses)
    mine, theirs = ts.model.state_dict(), out["model"].state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    # and the step does move the weights (the comparison is not between two untouched models)
    fresh = model_for(cfg, labeled_x=d["labeled_x"], num_classes=4).state_dict()
    assert not all(torch.equal(fresh[k], mine[k]) for k in mine if k.endswith("weight"))


def test_loss_weights_the_unlabeled_term():
    """loss = CE(labeled) + unlabeled_weight * soft-CE(targets), on a two-sample batch by hand."""
    cfg, d, pseudo = _setup()
    cfg.unlabeled_weight = 0.5
    model = model_for(cfg, labeled_x=d["labeled_x"], num_classes=4)
    ts = TrainStep(cfg=cfg, model=model, labeled_x=d["labeled_x"], labeled_y=d["labeled_y"],
                   gen=torch.Generator(), device=torch.device("cpu"), pseudo=pseudo)  # fmt: skip
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    y = torch.tensor([0])
    t = torch.tensor([[0.0, 0.5, 0.5, 0.0]])
    total, lab, unl = ts.loss(logits, y, t)
    e = torch.e
    ce_lab = -torch.log(torch.tensor(e**2 / (e**2 + 3)))
    soft = -(
        0.5 * torch.log(torch.tensor(e / (e + 3))) + 0.5 * torch.log(torch.tensor(1 / (e + 3)))
    )
    assert torch.isclose(lab, ce_lab) and torch.isclose(unl, soft)
    assert torch.isclose(total, ce_lab + 0.5 * soft)
    total_l, lab_l, none = ts.loss(logits[:1], y, None)  # teacher / baseline: labeled term only
    assert none is None and torch.isclose(total_l, ce_lab)

    # "ratio": the official weighting, w = unlabeled_ratio (2 here)
    cfg.unlabeled_weight = "ratio"
    ts = TrainStep(cfg=cfg, model=model, labeled_x=d["labeled_x"], labeled_y=d["labeled_y"],
                   gen=torch.Generator(), device=torch.device("cpu"), pseudo=pseudo)  # fmt: skip
    total, lab, unl = ts.loss(logits, y, t)
    assert ts.unlabeled_weight == 2.0 and torch.isclose(total, ce_lab + 2.0 * soft)


def test_label_smoothing_of_hard_pseudo_targets():
    """smooth_pseudo_labels: a one-hot pseudo target [0, 1, 0, 0] becomes [.025, .925, .025, .025]
    (label_smoothing 0.1, K = 4); soft targets are left alone; the labeled CE is smoothed either way."""
    cfg, d, pseudo = _setup()
    cfg.label_smoothing, cfg.smooth_pseudo_labels = 0.1, True
    model = model_for(cfg, labeled_x=d["labeled_x"], num_classes=4)
    ts = TrainStep(cfg=cfg, model=model, labeled_x=d["labeled_x"], labeled_y=d["labeled_y"],
                   gen=torch.Generator(), device=torch.device("cpu"), pseudo=pseudo)  # fmt: skip
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    e = torch.e
    logp_u = torch.log(torch.tensor([1 / (e + 3), e / (e + 3), 1 / (e + 3), 1 / (e + 3)]))
    logp_l = torch.log(torch.tensor([e**2, 1, 1, 1]) / (e**2 + 3))
    _, lab, unl = ts.loss(logits, torch.tensor([0]), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    assert torch.isclose(unl, -(0.925 * logp_u[1] + 0.025 * (logp_u.sum() - logp_u[1])))
    assert torch.isclose(lab, -(0.925 * logp_l[0] + 0.025 * (logp_l.sum() - logp_l[0])))
    soft = torch.tensor([[0.0, 0.5, 0.5, 0.0]])
    _, _, unl_soft = ts.loss(logits, torch.tensor([0]), soft)
    assert torch.isclose(unl_soft, -(0.5 * logp_u[1] + 0.5 * logp_u[2]))
    cfg.smooth_pseudo_labels = False  # the default (ts reads cfg): hard pseudo targets stay one-hot
    _, _, unl_hard = ts.loss(logits, torch.tensor([0]), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    assert torch.isclose(unl_hard, -logp_u[1])


def _noise(recipe: str, **kw) -> tuple[InputNoise, torch.Tensor]:
    cfg = TrainConfig(noise=NoiseConfig(recipe=recipe, ra_num_ops=2, ra_magnitude=5, **kw))
    x = torch.randint(0, 256, (64, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator())
    return InputNoise(cfg), x


def _cutout_squares(x: torch.Tensor, fill: int = 128, pad: int = 8) -> tuple[torch.Tensor, ...]:
    """Per sample: (some centre's border-clipped (2 pad)-square is entirely ``fill``, the ``fill``
    pixels are exactly such a square)."""
    mask = (x == fill).all(1).to(torch.int64)  # (B, H, W)
    s = torch.nn.functional.pad(mask.cumsum(1).cumsum(2), (1, 0, 1, 0))  # integral image
    c = torch.arange(x.shape[-1])
    lo, hi = (c - pad).clamp(min=0), (c + pad).clamp(max=x.shape[-1])
    rect = (
        s[:, hi[:, None], hi]
        - s[:, lo[:, None], hi]
        - s[:, hi[:, None], lo]
        + s[:, lo[:, None], lo]
    )
    area = (hi - lo)[:, None] * (hi - lo)[None, :]
    inside = rect == area
    exact = inside & (mask.sum((1, 2))[:, None, None] == area)
    return inside.flatten(1).any(1), exact.flatten(1).any(1)


def test_nsp_recipe_is_crop_flip_then_15_op_randaugment():
    """The default recipe, composed by hand from the public ops with the same generator."""
    noise, x = _noise("nsp")
    assert noise.ra.ops == OFFICIAL_OPS and len(OFFICIAL_OPS) == 15 and noise.ra.fill == 0
    out = noise(x, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    ra = RandAugmentBatch(num_ops=2, magnitude=5, fill=0)
    assert torch.equal(out, ra(random_crop_flip(x, pad=4, flip=True, generator=g), generator=g))
    assert not _cutout_squares(out, fill=0)[0].any()  # no 16-px cutout


def test_official_recipe_cuts_out_every_sample_after_randaugment():
    noise, x = _noise("official", crop_flip=False)
    assert noise.ra.ops == OFFICIAL_OPS + ("Cutout",) and noise.ra.fill == 128
    out = noise(x, torch.Generator().manual_seed(5))
    assert _cutout_squares(out)[0].all()  # a 16x16 (border-clipped) square of 128 in every image
    # the check can fail: RandAugment alone (its own Cutout op is at most 4 px here) leaves none
    assert not _cutout_squares(noise.ra(x, generator=torch.Generator().manual_seed(5)))[0].any()


def test_official_recipe_crops_after_the_cutout():
    """No RandAugment, images without 128: cutout then crop (reflect pad 4) shifts the square, cuts
    it at the border or splits it by the reflection, so in some images the 128 pixels are no longer
    one border-clipped 16-px square (cutting out last would always leave one)."""
    noise, x = _noise("official", randaugment=False, flip=False)
    x = x // 2  # 0..127
    out = noise(x, torch.Generator().manual_seed(3))
    assert ((out == 128).flatten(1).sum(1) >= 16).all()  # every image keeps >= 4 x 4 of it
    _, exact = _cutout_squares(out)
    assert exact.any() and not exact.all()
    assert _cutout_squares(random_cutout(x, pad_size=8, fill=128))[1].all()  # the control


def test_official_recipe_crops_after_randaugment():
    """Constant images, RandAugment = TranslateX by 4 px (fill 128): translating last leaves exactly 4
    all-128 columns at an edge; cropping (reflect pad 4) after it shifts / mirrors / removes that strip,
    so the count of all-128 columns varies from 0 to 7 (the 16-px cutout never fills a column)."""
    noise, _ = _noise("official", flip=False)
    noise.ra = RandAugmentBatch(num_ops=1, magnitude=10, fill=128, ops=("TranslateX",))
    x = torch.full((64, 1, 32, 32), 50, dtype=torch.uint8)
    full_cols = ((noise(x, torch.Generator().manual_seed(1)) == 128).all(2).sum(2)).flatten()
    assert full_cols.min() == 0 and full_cols.max() == 7 and (full_cols != 4).any()
    g = torch.Generator().manual_seed(1)  # the other order: always exactly 4
    crop_first = noise.ra(random_crop_flip(x, pad=4, flip=False, generator=g), generator=g)
    assert ((crop_first == 128).all(2).sum(2) == 4).all()
