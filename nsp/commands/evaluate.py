"""``nsp evaluate MODEL``: robustness of one trained model (``evaluate_raw@`` / ``evaluate@`` stages)."""

from __future__ import annotations

import argparse

HELP = "Evaluate a trained model on the robustness sets (mCE, relative mCE, mFR, mT5D, -A, calibration)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register ``nsp evaluate`` options."""
    p.add_argument("model", help="model name: teacher, a generation key (g1, ...) or baseline")
    step = p.add_mutually_exclusive_group()
    step.add_argument(
        "--raw",
        action="store_true",
        help="only run the model over the sets (writes robustness/raw/MODEL.json)",
    )
    step.add_argument(
        "--metrics",
        action="store_true",
        help="only normalise existing raw results by the baseline's (MODEL.metrics.json)",
    )
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument(
        "--outputs", default="outputs", help="pipeline outputs directory (default: outputs)"
    )
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")


def _excluded(m: dict) -> str:
    """The corruptions left out of relative mCE (baseline degradation below the epsilon), if any."""
    if not m["rel_ce_excluded"]:
        return ""
    return (
        f"; rel_mce over {m['rel_mce_corruptions']} corruptions, excluded (baseline degradation "
        f"< {m['rel_ce_min_degradation']:g}): {','.join(m['rel_ce_excluded'])}"
    )


def _fmt(v: object) -> str:
    return "-" if v is None else f"{v:.4f}"


def run(args: argparse.Namespace) -> int:
    """Run the raw step, the metrics step, or both (default)."""
    from pathlib import Path

    from nsp.config import load_params
    from nsp.robustness.normalise import run_evaluate

    params = load_params(args.params)
    out = Path(args.outputs)
    if not args.metrics:
        from nsp.robustness.stage import run_evaluate_raw  # torch: only for the raw step

        raw = run_evaluate_raw(params, args.model, out=out, progress=not args.no_progress)
        print(
            f"{args.model}: clean_acc={raw['clean_acc']:.4f} a_acc={_fmt(raw['a']['acc'])} "
            f"{raw['images_evaluated']} images in {raw['seconds']:.0f}s"
        )
    if not args.raw:
        m = run_evaluate(params, args.model, out=out)
        print(
            f"{args.model}: mce={_fmt(m['mce'])} rel_mce={_fmt(m['rel_mce'])} "
            f"mean_corruption_error={_fmt(m['mean_corruption_error'])} mfr={_fmt(m['mfr'])} "
            f"mt5d={_fmt(m['mt5d'])} calib_err={_fmt(m['calib_err'])} (normalised by "
            f"{m['normalised_by']}){_excluded(m)}"
        )
    return 0
