"""Robustness benchmarks: -C corruptions (ImageNet-C / CIFAR-10-C), -P perturbations and metrics."""
