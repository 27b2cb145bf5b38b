"""`python -m runners.offline --agent=lram --datasets=metaworld,darkroom ...`: multi-domain action models (LRAM and
its baselines ``dt_kv``, ``mamba``) trained by behaviour cloning on demonstrations and evaluated per task.

``--datasets`` names the domains (a shortcut for ``--env``); their tasks are ``env.metaworld_tasks`` and
``env.darkroom_tasks``. The datasets are built on first use (``dataset.build_missing``; alone:
``python -m runners.datasets metaworld --tasks ...``); the budget is in gradient updates (``--total-updates``);
``--eval-episodes`` sets the episodes per task. See agents/action_model.py and --help.
"""
import sys

from runners.cli import main


def translate(argv: list[str]) -> list[str]:
    """``--datasets X`` / ``--datasets=X`` -> ``--env=X``."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--datasets" and i + 1 < len(argv):
            out.append(f"--env={argv[i + 1]}")
            i += 2
            continue
        out.append("--env=" + argv[i].partition("=")[2] if argv[i].startswith("--datasets=") else argv[i])
        i += 1
    return out


if __name__ == "__main__":
    sys.exit(main("offline", translate(sys.argv[1:])))
