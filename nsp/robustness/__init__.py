"""Robustness benchmarks: -C corruptions (ImageNet-C / CIFAR-10-C), -P perturbations, -A, metrics.

Library (no params.yaml, no tracking): :mod:`~nsp.robustness.corruptions` (with its ``_c_*``
helpers), :mod:`~nsp.robustness.perturbations`, :mod:`~nsp.robustness.cv_ops` (the OpenCV
emulations both share), :mod:`~nsp.robustness.build` (the -C / -P / -A sets),
:mod:`~nsp.robustness.evaluate` and :mod:`~nsp.robustness.metrics`; :mod:`~nsp.robustness.releases`
reads the official released sets (class ids in :mod:`~nsp.robustness.wnids`). The tracked
DVC-stage runners (``robustness``, ``evaluate_raw@<model>``, ``evaluate@<model>``) are in
:mod:`~nsp.robustness.stage`. The official releases: protocols and class mapping in
:mod:`~nsp.robustness.release_protocols`, listing and evaluation in :mod:`~nsp.robustness.release_eval`,
the tracked runners (``release_list``, ``release_eval@<model>``, ``release_metrics@<model>``) in
:mod:`~nsp.robustness.release_stage`.
"""
