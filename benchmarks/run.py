"""Run the benchmark suite: ``python benchmarks/run.py [--json] [--quick] [--arch A] [--batch N]``.

A thin wrapper over :mod:`nsp.bench` with the ``nsp bench`` options (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from nsp.commands import bench

    parser = argparse.ArgumentParser(prog="benchmarks/run.py", description=bench.HELP)
    bench.add_arguments(parser)
    return bench.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
