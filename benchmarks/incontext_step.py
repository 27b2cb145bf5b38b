"""Per-step cost of in-context evaluation: RA-DT (retrieval included) against AD at its longer context, and DT.

    python benchmarks/incontext_step.py --tasks 20 --episodes 3 --repeats 3

Each agent is built as ``runners.incontext`` builds it (the configs' sizes unless ``--set`` changes them; the
key model of RA-DT is trained for ``--embedder-updates`` only: its weights do not change the cost), then rolls
out ``--episodes`` consecutive in-context episodes on ``--tasks`` held-out goals stepping together, and the
wall time per environment step (one model call serving every task) is reported: the median over repeats,
the agents alternated in each repeat, and RA-DT's ratio to AD within each repeat. RA-DT's first episode has
no memory yet (as in the paper's evaluation), so at least 2 episodes are needed to include retrieval.
Training updates are not measured. Needs the Dark-Room datasets (built on first use, as by the runner).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents import get_agent  # noqa: E402
from envs import make_vec_env  # noqa: E402
from runners.rundir import config_files, make_agent, resolve  # noqa: E402


def build(agent: str, args) -> object:
    spec = get_agent(agent, "incontext")
    overrides = [("dataset.train_tasks", str(args.train_tasks)), ("env.eval_heldout_tasks", str(args.tasks)),
                 ("run.torch_threads", str(args.threads))]
    if agent == "ra_dt":
        overrides.append(("ra_dt.embedder_updates", str(args.embedder_updates)))
    overrides += [tuple(s.split("=", 1)) for s in args.set if s.startswith(f"{spec.family}.")]
    sections, _ = resolve("incontext", spec, config_files("incontext", spec), overrides)
    envs = make_vec_env("incontext", sections["env"], 0)
    built = make_agent(spec, sections, envs, torch.device("cpu"), 0)
    if agent == "ra_dt":
        built.update()  # trains the key model and builds the training memory, as the first update does
    return built


def per_step_ms(agent, tasks, episodes: int) -> float:
    generator = torch.Generator().manual_seed(0)
    horizon = agent.envs.horizon
    with torch.no_grad():
        t0 = time.perf_counter()
        agent.rollout(tasks, episodes, generator)
    return 1000 * (time.perf_counter() - t0) / (episodes * horizon)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", nargs="+", default=["ra_dt", "ad", "dt"])
    parser.add_argument("--tasks", type=int, default=20, help="held-out goals stepping together")
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-tasks", type=int, default=10, help="train goals whose histories are loaded")
    parser.add_argument("--embedder-updates", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    agents = {name: build(name, args) for name in args.agents}
    tasks = next(iter(agents.values())).envs.eval_tasks["heldout"]
    times: dict[str, list[float]] = {name: [] for name in agents}
    for r in range(args.repeats):
        order = list(agents) if r % 2 == 0 else list(reversed(agents))
        for name in order:
            times[name].append(per_step_ms(agents[name], tasks, args.episodes))
    print(f"{len(tasks)} tasks x {args.episodes} episodes, {args.threads} thread(s); ms per environment step "
          f"(all tasks), median of {args.repeats}:")
    for name, values in times.items():
        context = agents[name].cfg.context
        print(f"  {name:<8} context {context:>4} steps  {statistics.median(values):8.2f} ms   "
              f"({', '.join(f'{v:.2f}' for v in values)})")
    if "ra_dt" in times and "ad" in times:
        ratios = [a / b for a, b in zip(times["ra_dt"], times["ad"])]
        listed = ", ".join(f"{x:.2f}" for x in ratios)
        print(f"  RA-DT / AD per step: median {statistics.median(ratios):.2f} ({listed})")


if __name__ == "__main__":
    main()
