"""runners.continual (agents/continual.py, envs/continual.py): every method runs its stages end to end from one
pre-trained model; the frozen methods leave it bit for bit; EWC's penalty; resume between and within stages;
bad input is one line and exit 2."""
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("metaworld")

from runners.cli import main as run_suite  # noqa: E402
from runners.continual import main  # noqa: E402

METHODS = ("ft", "ewc", "lora", "lora_oracle", "l2m", "l2p", "multitask")


@pytest.fixture(scope="module")
def setup(tiny_pretrained):
    """The tiny pre-trained mtdt (tests/conftest.py); the first two CW10 tasks' datasets go beside its own."""
    root, run_dir, _ = tiny_pretrained
    return root, run_dir


def tiny(root: Path, pretrained: Path, method: str, *extra: str) -> list[str]:
    return [f"--agent={method}", "--tasks=2", "--total-updates=4", f"--pretrained={pretrained}",
            f"--results-dir={root}", "--no-progress", "--set", "env.pretrain_tasks=reach-v3",
            "--set", f"dataset.root={root / 'data'}", "--set", "dataset.metaworld_episodes=2",
            "--set", "run.eval_episodes=1", "--set", f"{method}.updates_per_iteration=2",
            "--set", f"{method}.batch_size=2", "--set", "diagnostics.interval=1", "--set", "run.checkpoint_steps=2",
            *extra]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)["agent"]["policy"]


def base_key(key: str, method: str) -> str:
    """A frozen weight's name in a method's model: the modulation routes ``attn.qkv`` and ``mlp.fc`` through
    ``<module>.base``, L2P wraps each block (``blocks.<i>.block``)."""
    if method in ("lora", "lora_oracle", "l2m"):
        for module in ("attn.qkv.", "mlp.fc."):
            key = key.replace(module, module + "base.")
    if method == "l2p":
        import re
        key = re.sub(r"blocks\.(\d+)\.", r"blocks.\1.block.", key)
    return key


@pytest.mark.parametrize("method", METHODS)
def test_each_method_learns_the_stages_from_the_pretrained_model(setup, method):
    root, pretrained = setup
    assert main(tiny(root, pretrained, method, f"--run-name={method}")) == 0
    run_dir = root / "continual" / method
    evaluations = json.loads((run_dir / "eval.json").read_text())["evaluations"]
    assert [e["step"] for e in evaluations] == [2, 4, 6, 8]  # twice per stage
    assert set(evaluations[-1]["metaworld"]) == {"hammer-v3", "push-wall-v3", "reach-v3"}  # sequence + pre-training
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "losses/action_ce/hammer-v3" in header and "losses/action_ce/push-wall-v3" in header
    assert ("losses/ewc" in header) == (method == "ewc") and ("losses/key_pull" in header) == (method in ("l2m", "l2p"))
    before, after = weights(pretrained), weights(run_dir)
    frozen = method in ("lora", "lora_oracle", "l2m", "l2p")
    unchanged = all(torch.equal(v, after[base_key(k, method)]) for k, v in before.items())
    assert unchanged == frozen  # the frozen methods keep it bit for bit
    # the pre-training data's state statistics, kept by every method
    assert bool((before["state_scale"] != 1).any())
    assert all(torch.equal(before[k], after[k]) for k in ("state_mean", "state_scale"))
    if method == "l2m":
        assert after["modulation.a_q"].shape[0] == 30 and "pool.keys" in after
        assert set(evaluations[1]["key_accuracy"]) == {"hammer-v3"}  # the end of stage 1: one task learned
        assert set(evaluations[-1]["key_accuracy"]) == {"hammer-v3", "push-wall-v3"}
        assert "eval/metaworld/key_accuracy" in header


def test_ewc_penalises_distance_from_the_finished_tasks_weights():
    from types import SimpleNamespace

    from agents.continual import EWC
    agent = object.__new__(EWC)
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    agent.policy = torch.nn.Module()
    agent.policy.register_parameter("w", p)
    agent.cfg = SimpleNamespace(ewc_lambda=400.0)
    agent.ewc_terms = [([torch.tensor([0.5, 0.0])], [torch.tensor([0.0, 0.0])]),
                       ([torch.tensor([1.0, 1.0])], [torch.tensor([1.0, 1.0])])]
    # 400 * (0.5 * 1^2 + 0 * 2^2 + 1 * 0^2 + 1 * 1^2) = 600
    assert float(agent.regularisers()["ewc"].detach()) == pytest.approx(600.0)


def test_resume_is_exact_within_and_between_stages(setup):
    root, pretrained = setup
    args = tiny(root, pretrained, "ewc", "--set", "diagnostics.enabled=false", "--set", "run.eval_interval=0")
    assert main([*args, "--run-name=full"]) == 0
    full = weights(root / "continual" / "full")
    for stop in (2, 6):  # inside stage 1; inside stage 2, after the task switch (EWC's terms of task 1)
        name = f"cut{stop}"
        assert main([*args, f"--run-name={name}", "--set", f"run.total_steps={stop}"]) == 0
        assert run_suite("continual", ["--resume", str(root / "continual" / name), "--total-updates=8",
                                       "--no-progress"]) == 0
        for k, v in full.items():
            torch.testing.assert_close(weights(root / "continual" / name)[k], v, atol=0, rtol=0)


def test_a_later_first_task_learns_that_task_alone(setup):
    """--first-task=K: the single-task reference of the sequence's task K (forward transfer's AUC_ref)."""
    root, pretrained = setup
    args = tiny(root, pretrained, "ft", "--run-name=second-alone", "--first-task=1")
    args[args.index("--tasks=2")] = "--tasks=1"
    assert main(args) == 0
    run_dir = root / "continual" / "second-alone"
    evaluations = json.loads((run_dir / "eval.json").read_text())["evaluations"]
    assert [e["step"] for e in evaluations] == [2, 4]
    assert set(evaluations[-1]["metaworld"]) == {"push-wall-v3", "reach-v3"}
    assert "losses/action_ce/push-wall-v3" in (run_dir / "metrics.csv").read_text().splitlines()[0]


def test_bad_input_is_one_line_and_exit_2(setup, capsys):
    root, pretrained = setup
    cases = [(["--agent=l2q"], "unknown method 'l2q'"), (["--tasks=11"], "--tasks must lie in 1..10"),
             (["--set", "env.pretrain_tasks=hammer-v3"], "hammer-v3 is a CW10 task"),
             ([f"--pretrained={root / 'nowhere'}"], "is not a run directory"),
             (["--set", "run.total_steps=100"], "run.total_steps=100"),
             (["--total-updates=3"], "multiple of --evals-per-stage"),
             (["--first-task=9"], "stage index out of range: --first-task must lie in 0..8"),
             (["--set", "env.first_task=9"], "stage index out of range: --first-task must lie in 0..8")]
    for extra, message in cases:
        capsys.readouterr()
        args = tiny(root, pretrained, "l2m", "--run-name=bad")  # a later --agent wins
        assert main([*args, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (extra, err)
        assert not (root / "continual" / "bad").exists()
