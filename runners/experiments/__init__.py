"""Multi-seed experiments that produce the pages in ``results/``: one command each.

    python -m runners.experiments plasticity_supervised            # results/plasticity_supervised.md
    python -m runners.experiments plasticity_supervised --quick    # a smaller version, for a smoke test

Every run is a normal run directory (under ``results/<experiment>/``), launched as a
subprocess of the suite's runner, two at a time; the page is rebuilt from their
``metrics.csv`` files, so rerunning the command reproduces every number and plot.
One module per experiment (``plasticity_supervised``, ``soft_reset``, ``masp``, ``pfo``, ``ra_dt``,
``forgetting``, ``lram``, ``l2m``) on the shared helpers of ``common``; the intervals are ``runners.stats``'.
"""
from __future__ import annotations

import argparse
import os
import sys

from configs import ConfigError
from runners.experiments.common import REPO
from runners.experiments.forgetting import forgetting
from runners.experiments.l2m import l2m
from runners.experiments.lram import lram
from runners.experiments.masp import masp, similarity_changes
from runners.experiments.pfo import pfo
from runners.experiments.plasticity_supervised import plasticity_supervised
from runners.experiments.ra_dt import ra_dt
from runners.experiments.soft_reset import soft_reset
from runners.stats import interval_order, t_interval

EXPERIMENTS = {"plasticity_supervised": plasticity_supervised, "soft_reset": soft_reset, "masp": masp, "pfo": pfo,
               "ra_dt": ra_dt, "forgetting": forgetting, "lram": lram,
               "l2m": l2m}

__all__ = ["EXPERIMENTS", "interval_order", "main", "similarity_changes", "t_interval"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("--quick", action="store_true", help="fewer tasks and seeds (smoke test)")
    parser.add_argument("--results-dir", default=str(REPO / "results"), help="where the run directories go")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        EXPERIMENTS[args.experiment](args)
    except ConfigError as exc:  # a bad value, or a page, figure or run that could not be written
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
