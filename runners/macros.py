"""`python -m runners.macros mine RUN_DIR [--n 2 3] [--top 4] [--out macros.yaml]`: macro-actions from a run's replay.

Counts the most frequent action n-grams within episodes of the replay buffer saved in
``RUN_DIR/checkpoints/latest.pt`` (:func:`envs.macros.mine_ngrams`) and prints them, or writes
them as a YAML file for ``--set rainbow.macros=file:PATH``. The buffer's saved ring layout is
read by ``agents/replay.py`` (:func:`agents.replay.action_traces`), the one place that knows it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from agents.replay import action_traces
from configs import ConfigError
from envs.macros import mine_ngrams


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.macros",
                                     description="Mine frequent action n-grams from a run's replay buffer as macros.")
    sub = parser.add_subparsers(dest="command", required=True)
    mine = sub.add_parser("mine", help="count action n-grams in RUN_DIR/checkpoints/latest.pt's replay")
    mine.add_argument("run_dir", type=Path)
    mine.add_argument("--n", type=int, nargs="+", default=[2, 3], help="n-gram lengths")
    mine.add_argument("--top", type=int, default=4, help="macros kept per length")
    mine.add_argument("--out", type=Path, help="YAML file to write (default: print)")
    args = parser.parse_args(argv)
    try:
        from runners.storage import atomic_write_text, load_checkpoint
        ckpt = load_checkpoint(args.run_dir / "checkpoints" / "latest.pt")
        replay = ckpt["agent"].get("replay")
        if replay is None:
            raise ConfigError(f"{args.run_dir} has no replay buffer in its checkpoint "
                              "(an off-policy agent's run is needed)")
        num_primitives = int(ckpt["agent"].get("num_primitives", int(replay["actions"].max()) + 1))
        actions, valid = action_traces(replay)
        macros = mine_ngrams(actions, valid, args.n, args.top, num_primitives)
        text = yaml.safe_dump(macros, default_flow_style=None)
        if args.out:
            atomic_write_text(args.out, text)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        print(f"wrote {len(macros)} macros to {args.out}; use --set rainbow.macros=file:{args.out}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
