"""`python -m runners.mujoco --agent=... --env=...`: train on the mujoco suite. See runners/cli.py and --help."""
import sys

from runners.cli import main

if __name__ == "__main__":
    sys.exit(main("mujoco"))
