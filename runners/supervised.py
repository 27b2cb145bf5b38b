"""`python -m runners.supervised --learner=online --env=random_labels ...`: the non-stationary supervised lab.

See envs/supervised.py (task streams), agents/supervised.py (learner) and --help.
"""
import sys

from runners.cli import main

if __name__ == "__main__":
    sys.exit(main("supervised"))
