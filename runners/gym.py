"""`python -m runners.gym --agent=... --env=...`: train on the gym suite. See runners/cli.py and --help."""
import sys

from runners.cli import main

if __name__ == "__main__":
    sys.exit(main("gym"))
