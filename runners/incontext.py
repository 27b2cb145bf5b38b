"""`python -m runners.incontext --agent=ra_dt --env=DarkRoom-10x10 ...`: offline sequence models (RA-DT, AD, DT)
trained on grid-world learning histories and evaluated in context on held-out and train tasks.

The datasets are built on first use (``dataset.build_missing``; alone: ``python -m runners.datasets``); the
budget is in gradient updates (``--total-updates``); ``--eval-episodes`` sets the in-context episodes per task.
See agents/offline.py, agents/dt.py, agents/ra_dt.py and --help.
"""
import sys

from runners.cli import main

if __name__ == "__main__":
    sys.exit(main("incontext"))
