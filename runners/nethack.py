"""`python -m runners.nethack --agent=ppo --env=NetHackScore-v0`: train on the nethack suite.

See runners/cli.py and --help."""
import sys

from runners.cli import main

if __name__ == "__main__":
    sys.exit(main("nethack"))
