"""The offline seam and its first agents (DT, AD): sequence sampling, schedules, sampling rules, the in-context
runner end to end, its evaluation records, resume, and the budget / evaluation refusals."""
import json
import math
import signal

import numpy as np
import pytest
import torch

from agents.base import Agent
from agents.offline import SequenceData, returns_to_go, sample_actions, warmup_cosine
from envs.histories import TaskHistory
from runners.cli import main
from tests.test_runner import (
    assert_same_state,
    comparable,
    final_state,
    interrupt_after_rows,
    read_rows,
    run_main,
    start_subprocess,
)

pytest.importorskip("minari")


def history(task, rewards_per_episode):
    """A fake learning history: episodes of the given rewards, walking along the bottom row."""
    rewards = np.concatenate([np.asarray(r, np.float32) for r in rewards_per_episode])
    episode = np.concatenate([np.full(len(r), e) for e, r in enumerate(rewards_per_episode)])
    n = len(rewards)
    obs = np.stack([np.arange(n) % 10, np.zeros(n)], 1).astype(np.float32)
    dones = np.zeros(n, bool)
    dones[np.cumsum([len(r) for r in rewards_per_episode]) - 1] = True
    return TaskHistory("DarkRoom-10x10", np.asarray(task), obs, np.arange(n) % 5, rewards, episode, dones,
                       np.zeros((len(rewards_per_episode), 2), np.float32))


def test_returns_to_go_restart_at_every_episode():
    rtg = returns_to_go(np.array([1, 0, 1, 1, 0, 2], np.float32), np.array([0, 0, 0, 1, 1, 1]))
    assert rtg.tolist() == [2, 1, 1, 3, 2, 2]


def test_windows_stay_inside_episodes():
    data = SequenceData([history([2, 0], [[0, 0, 1], [1, 1, 0]]), history([3, 3], [[0, 1, 0, 0]])], size=10)
    inside = data.window_starts(3)
    assert inside.tolist() == [0, 3, 6, 7]  # each window's 3 steps share one episode
    window = data.gather(np.array([1]), 3)
    assert window["timestep"].tolist() == [[1, 2, 0]] and window["rtg"].tolist() == [[1, 1, 2]]
    assert window["task"].tolist() == [[0, 0, 0]] and window["episode"].tolist() == [[0, 0, 1]]
    assert data.gather(np.array([6]), 3)["episode"].tolist() == [[2, 2, 2]]  # episode ids are global
    assert data.gather(np.array([0]), 1)["cell"].tolist() == [[0]]  # (x, y) = (0, 0) -> cell 0


def test_ad_pairs_an_episode_with_the_one_episodes_apart_before_it_in_its_own_history():
    # task 0: episodes 0-3 (2 steps each); task 1: episodes 4-5 (3 and 1 steps)
    data = SequenceData([history([2, 0], [[0, 0], [0, 1], [1, 0], [1, 1]]), history([3, 3], [[0, 0, 1], [0]])],
                        size=10)
    context, target = data.episode_pairs(episodes_apart=2, length=4)
    # 1 and 5 pair with their history's first episode (fewer than 2 precede them); 0 and 4 are no targets
    assert list(zip(context.tolist(), target.tolist())) == [(0, 1), (0, 2), (1, 3), (4, 5)]
    window = data.gather_pairs(np.array([1]), np.array([3]), 4, np.random.default_rng(0))
    assert window["episode"].tolist() == [[1, 1, 3, 3]] and window["reward"].tolist() == [[0, 1, 1, 1]]
    assert window["timestep"].tolist() == [[0, 1, 0, 1]]
    offsets = {tuple(data.gather_pairs(np.array([4]), np.array([5]), 3, np.random.default_rng(s))["timestep"][0])
               for s in range(40)}
    assert offsets == {(0, 1, 2), (1, 2, 0)}  # 4 steps, 3-step windows: both offsets, each inside the pair
    context, target = data.episode_pairs(episodes_apart=1, length=4)
    assert list(zip(context.tolist(), target.tolist())) == [(0, 1), (1, 2), (2, 3), (4, 5)]
    with pytest.raises(ValueError, match="no two episodes"):
        data.episode_pairs(episodes_apart=1, length=5)


def test_warmup_then_cosine_by_hand():
    assert warmup_cosine(0, 4, 14, 1.0, 0.0) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 14, 1.0, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(9, 4, 14, 1.0, 0.0) == pytest.approx(0.5)  # halfway through the decay
    assert warmup_cosine(14, 4, 14, 1.0, 0.1) == pytest.approx(0.1)


def test_nucleus_sampling_keeps_the_smallest_set_reaching_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    drawn = {int(sample_actions(logits, g, top_p=0.7)) for _ in range(200)}
    assert drawn == {0, 1}  # 0.5 < 0.7 <= 0.8: actions 0 and 1
    assert {int(sample_actions(logits, g, top_p=0.5)) for _ in range(50)} == {0}
    assert len({int(sample_actions(logits, g)) for _ in range(500)}) == 4


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    from envs.offline_data import ensure_datasets
    root = tmp_path_factory.mktemp("datasets")
    ensure_datasets(root, "DarkRoom-10x10", ["train"], seed=0, progress=False, limit=4)
    return root


def tiny(agent: str, root, updates: int = 20):
    return ["--agent", agent, "--env", "DarkRoom-10x10", "--total-updates", str(updates), "--eval-episodes", "2",
            "--set", f"dataset.root={root}", "--set", "dataset.train_tasks=4", "--set", "env.eval_heldout_tasks=2",
            "--set", "env.eval_train_tasks=2", "--set", f"{agent}.n_layer=1", "--set", f"{agent}.d_model=32",
            "--set", f"{agent}.n_head=2", "--set", f"{agent}.context=10", "--set", f"{agent}.batch_size=8",
            "--set", f"{agent}.updates_per_iteration=5", "--set", f"{agent}.warmup_updates=4",
            "--set", "run.eval_interval=10", "--set", "run.checkpoint_steps=5", "--set", "diagnostics.interval=2",
            "--set", "diagnostics.probe_size=8", "--set", "diagnostics.kernel_samples=16",
            *(["--set", "ra_dt.embedder_updates=4", "--set", "ra_dt.cache_steps=5", "--set", "ra_dt.key_window=10",
               "--set", "ra_dt.retrieve_every=5"] if agent == "ra_dt" else [])]


@pytest.mark.parametrize("agent", ["dt", "ad", "ra_dt"])
def test_incontext_run_trains_evaluates_and_diagnoses(agent, datasets, tmp_path):
    rc, run_dir = run_main("incontext", tiny(agent, datasets), tmp_path)
    assert rc == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["env_steps"] == 20
    evals = json.loads((run_dir / "eval.json").read_text())["evaluations"]
    assert [e["step"] for e in evals] == [10, 20]
    for e in evals:
        assert len(e["heldout"]["tasks"]) == 2 and len(e["train"]["tasks"]) == 2
        assert np.array(e["heldout"]["returns"]).shape == (2, 2)  # tasks x in-context episodes
    rows = read_rows(run_dir)
    assert len(rows) == 4 and all(math.isfinite(float(r["losses/action_ce"])) for r in rows)
    evaluated = [r for r in rows if r.get("eval/heldout/return_norm_last")]
    assert [int(r["step"]) for r in evaluated] == [10, 20]
    first = evaluated[0]
    returns = np.array(evals[0]["heldout"]["returns"]) / np.array(evals[0]["heldout"]["best"])[:, None]
    assert float(first["eval/heldout/return_norm_last"]) == pytest.approx(returns[:, -1].mean())
    keys = set(rows[0])
    block = "policy/transformer.blocks.0"
    for name in (f"plasticity/dormant_frac/{block}.mlp.fc", f"plasticity/srank/{block}.mlp.fc",
                 f"plasticity/attn_entropy/{block}.attn", f"plasticity/attn_sink/{block}.attn",
                 f"plasticity/elr/{block}.attn.qkv"):
        assert name in keys and rows[0][name] != "", name
    if agent == "ra_dt":  # the cross-attention over the retrieved chunk is diagnosed too
        assert rows[0][f"plasticity/attn_entropy/{block}.cross"] != ""
    probe = torch.load(run_dir / "probe.pt")
    assert probe["states"].shape == (8, 10, 100) and probe["actions"].shape == (8, 10)


def test_interrupted_incontext_run_resumes_to_the_same_state(datasets, tmp_path):
    args = ["--seed", "3", *tiny("ad", datasets, updates=30)]
    rc, full = run_main("incontext", args, tmp_path, "full")
    assert rc == 0
    proc = start_subprocess("incontext", args, tmp_path, "cut")
    cut = tmp_path / "t" / "cut"
    rc, err = interrupt_after_rows(proc, cut, 2, signal.SIGTERM)
    assert rc == 0, err
    assert json.loads((cut / "summary.json").read_text())["status"] == "interrupted"
    assert main("incontext", ["--resume", str(cut), "--no-progress"]) == 0
    assert_same_state(final_state(full), final_state(cut))
    assert comparable(read_rows(full)) == comparable(read_rows(cut))
    full_evals = json.loads((full / "eval.json").read_text())
    assert json.loads((cut / "eval.json").read_text()) == full_evals


@pytest.mark.parametrize("suite,argv,message", [
    ("incontext", ["--total-steps", "10"], "the incontext suite's budget is in updates: use --total-updates"),
    ("classic", ["--total-updates", "10"], "the classic suite's budget is in steps: use --total-steps"),
    ("classic", ["--set", "run.eval_interval=5"], "the ppo_pfo agent has no evaluation phase"),
    ("incontext", ["--env", "DarkRoom-9x9"], "env.id: 'DarkRoom-9x9' is not one of: DarkRoom-10x10"),
    ("incontext", ["--agent", "ppo"], "unknown agent 'ppo' for the incontext suite; valid agents:"),
    ("incontext", ["--intervention", "redo"], "does not support the intervention 'redo'"),
])
def test_offline_bad_input_is_one_clear_error(suite, argv, message, datasets, tmp_path, capsys):
    extra = ["--agent", "dt", "--set", f"dataset.root={datasets}", "--set", "dataset.train_tasks=4"] \
        if suite == "incontext" and "--agent" not in argv else []
    rc = main(suite, [*extra, *argv, "--results-dir", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert not any(tmp_path.iterdir())


def test_a_missing_dataset_names_the_command_that_builds_it(tmp_path, capsys):
    rc = main("incontext", ["--agent", "dt", "--set", f"dataset.root={tmp_path / 'none'}", "--set",
                            "dataset.build_missing=false", "--results-dir", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "python -m runners.datasets DarkRoom-10x10" in err, err


def test_only_agents_with_an_evaluation_phase_say_so():
    from agents.dt import AlgorithmDistillation, DecisionTransformerAgent
    from agents.ppo import PPO
    assert DecisionTransformerAgent.can_evaluate() and AlgorithmDistillation.can_evaluate()
    assert not PPO.can_evaluate() and not Agent.can_evaluate()
