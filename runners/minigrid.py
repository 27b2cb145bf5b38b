"""`python -m runners.minigrid --agent=ppo --env=MiniGrid-DoorKey-8x8-v0`: train on the minigrid suite.

See runners/cli.py and --help."""
import sys

from runners.cli import main

if __name__ == "__main__":
    sys.exit(main("minigrid"))
