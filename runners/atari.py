"""`python -m runners.atari --agent=ppo_pfo ...`: train on the atari suite. See runners/cli.py and --help."""
import sys

from runners.cli import main

if __name__ == "__main__":
    sys.exit(main("atari"))
