"""The forgetting testbed and fine-tuning with retention (Wolczyk et al. 2024): the losses by hand, the methods on a
pre-trained run, the runner end to end, bad input."""
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("minigrid")

from agents.finetune import FinetunePPO, diagonal_fisher, encoder_layers, ewc_penalty, kickstart_coefficient  # noqa: E402
from agents.networks import minigrid_cnn  # noqa: E402
from envs.forgetting import FAR_ID, FULL_ID, NEAR_REWARD  # noqa: E402
from envs.minigrid import minigrid_ids  # noqa: E402
from runners import finetune  # noqa: E402
from runners.cli import main  # noqa: E402
from runners.rundir import build_agent  # noqa: E402

TINY = ["--no-progress", "--set", "env.num_envs=2", "--set", "ppo.num_steps=32", "--set", "ppo.minibatch_size=32",
        "--set", "diagnostics.interval=1", "--set", "run.checkpoint_steps=64"]


def test_testbed_layout_near_and_far_starts():
    minigrid_ids()
    near, far = gym.make(FULL_ID).unwrapped, gym.make(FAR_ID).unwrapped

    def cells(env, kind, xs):
        return [(x, y) for x in xs for y in range(1, 4) if env.grid.get(x, y) is not None
                and env.grid.get(x, y).type == kind]
    for seed in range(5):
        for env in (near, far):
            env.reset(seed=seed)
            assert len(cells(env, "lava", [2])) == 2 and len(cells(env, "wall", [4])) == 2  # one gap in each
            doors = [env.grid.get(x, y) for x, y in cells(env, "door", range(1, 11))]
            assert len(doors) == 1 and doors[0].is_locked and cells(env, "door", [8])
            assert len(cells(env, "key", range(5, 8))) == 1 and not cells(env, "key", [1, 2, 3, 9, 10])
            assert len(cells(env, "goal", [9, 10])) == 1
        assert near.agent_pos[0] == 1 and far.agent_pos[0] == 5


def test_testbed_pays_the_near_reward_once_on_entering_the_far_part():
    minigrid_ids()
    near, far = gym.make(FULL_ID).unwrapped, gym.make(FAR_ID).unwrapped
    near.reset(seed=0)
    gap = next(y for y in range(1, 4) if near.grid.get(4, y) is None)
    forward = near.actions.forward
    near.agent_pos, near.agent_dir = (4, gap), 0  # in the wall's gap, facing the far part
    assert near.step(forward)[1] == NEAR_REWARD and tuple(near.agent_pos) == (5, gap)
    near.agent_pos, near.agent_dir = (4, gap), 0  # entering again pays nothing
    assert near.step(forward)[1] == 0
    far.reset(seed=0)
    far.agent_pos, far.agent_dir = (4, gap), 0  # far starts begin past the near part: no near reward
    far.grid.set(4, gap, None)
    assert far.step(forward)[1] == 0


def test_kickstart_coefficient_by_hand():
    assert kickstart_coefficient(0.75, 0.99998, 0.33, 0) == 0.75
    assert kickstart_coefficient(0.75, 0.99998, 0.33, 1) == pytest.approx(0.749985)
    assert kickstart_coefficient(0.75, 0.5, 0.33, 1) == 0.375
    assert kickstart_coefficient(0.75, 0.5, 0.33, 2) == 0.33  # 0.1875 floored


def test_ewc_penalty_by_hand():
    params = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    anchors = [torch.tensor([0.0, 0.0]), torch.tensor([[1.0]])]
    fisher = [torch.tensor([0.5, 2.0]), torch.tensor([[0.25]])]
    assert float(ewc_penalty(params, anchors, fisher)) == pytest.approx(0.5 * 1 + 2.0 * 4 + 0.25 * 4)


def test_diagonal_fisher_is_the_mean_of_per_sample_squared_gradients():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4))
    obs, actions = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 1])

    def log_prob(out, a):
        return torch.log_softmax(out, -1).gather(1, a[:, None]).squeeze(1)
    fisher = diagonal_fisher(net, obs, actions, log_prob, chunk=2)
    expected = [torch.zeros_like(p) for p in net.parameters()]
    for x, a in zip(obs, actions):
        net.zero_grad()
        log_prob(net(x[None]), a[None]).sum().backward()
        for e, p in zip(expected, net.parameters()):
            e += p.grad ** 2 / len(obs)
    for f, e in zip(fisher, expected):
        torch.testing.assert_close(f, e)


def test_the_encoder_is_every_layer_before_the_last_hidden_one():
    net = minigrid_cnn((7, 7, 7), 7)
    names = [n for n, m in net.named_children() if any(m is e for e in encoder_layers(net))]
    assert names == ["scale", "conv1", "act1", "pool1", "conv2", "act2", "conv3", "act3", "flatten"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pretrain")
    assert main("minigrid", ["--agent=ppo", f"--env={FAR_ID}", "--total-steps=128", f"--results-dir={root}",
                             "--run-name=pre", *TINY]) == 0
    return root / "minigrid" / "pre"


def finetuner(pretrained: Path, method: str) -> FinetunePPO:
    agent = build_agent("minigrid", "ppo_finetune", [("env.id", FULL_ID), ("env.num_envs", "2"),
                                                     ("ppo.num_steps", "32"), ("ppo.minibatch_size", "32"),
                                                     ("finetune.method", method), ("finetune.data_steps", "64"),
                                                     ("finetune.data_envs", "2"),
                                                     ("finetune.pretrained", str(pretrained))], seed=3)
    assert isinstance(agent, FinetunePPO)
    return agent


def test_fine_tuning_starts_from_the_pretrained_weights_and_kickstart_kl_is_zero_against_itself(pretrained):
    agent = finetuner(pretrained, "kickstart")
    saved = torch.load(pretrained / "checkpoints" / "latest.pt", weights_only=False)["agent"]["actor"]
    for k, v in agent.actor.state_dict().items():
        torch.testing.assert_close(v, saved[k])
    agent.collect()
    batch = agent._prepare_batch()
    idx = torch.arange(32)
    x = agent._scaled(batch.obs[idx])
    params = agent._policy(x)[0]
    loss, terms = agent.auxiliary_loss(x, params, batch.valid[idx])
    assert float(loss.detach()) == 0.0 and float(terms["losses/kickstart_kl"].detach()) == 0.0
    assert terms["losses/kickstart_coef"] == 0.75
    agent.update(diagnose=False)
    assert agent.sgd_steps == agent.cfg.epochs * 2  # 2 envs x 32 steps: two minibatches of 32 per epoch
    loss, terms = agent.auxiliary_loss(x, agent._policy(x)[0], batch.valid[idx])
    assert float(terms["losses/kickstart_kl"].detach()) > 0
    assert terms["losses/kickstart_coef"] == pytest.approx(0.75 * 0.99998 ** agent.sgd_steps)


def test_the_scratch_reference_starts_fresh_and_compares_with_the_pretrained_policy(pretrained):
    agent = finetuner(pretrained, "scratch")
    saved = torch.load(pretrained / "checkpoints" / "latest.pt", weights_only=False)["agent"]["actor"]
    assert not torch.equal(agent.actor.state_dict()["head.weight"], saved["head.weight"])
    for k, v in agent.teacher.state_dict().items():
        torch.testing.assert_close(v, saved[k])
    assert agent.auxiliary_loss(torch.zeros(1), torch.zeros(1), torch.ones(1)) is None


def test_freeze_keeps_the_encoder_and_trains_the_rest(pretrained):
    agent = finetuner(pretrained, "freeze")
    before = {k: v.clone() for k, v in agent.actor.state_dict().items()}
    agent.iterate(diagnose=False)
    after = agent.actor.state_dict()
    for k in before:
        changed = not torch.equal(before[k], after[k])
        assert changed == k.startswith(("fc.", "head.")), k


def test_ewc_penalty_is_zero_at_the_start_and_its_fisher_positive(pretrained):
    agent = finetuner(pretrained, "ewc")
    assert len(agent.data_obs) == 64 and agent.data_obs.shape[1:] == (7, 7, 7)
    assert all(float(f.sum()) > 0 for f in agent.fisher)
    loss, terms = agent.auxiliary_loss(torch.zeros(1), torch.zeros(1), torch.ones(1))
    assert float(loss.detach()) == 0.0
    agent.iterate(diagnose=False)
    loss, terms = agent.auxiliary_loss(torch.zeros(1), torch.zeros(1), torch.ones(1))
    value = float(loss.detach())
    assert value == pytest.approx(agent.ft.ewc_lambda / 2 * float(terms["losses/ewc"].detach())) and value > 0


def test_bc_is_the_cross_entropy_of_the_pretraining_actions(pretrained):
    agent = finetuner(pretrained, "bc")
    state = agent.gen.get_state()
    loss, terms = agent.auxiliary_loss(torch.zeros(1), torch.zeros(1), torch.ones(1))
    agent.gen.set_state(state)
    idx = torch.randint(len(agent.data_obs), (agent.cfg.minibatch_size,), generator=agent.gen)
    logits = agent.actor(agent.data_obs[idx])
    expected = float(nn.functional.cross_entropy(logits, agent.data_actions[idx]).detach())
    assert float(terms["losses/bc"].detach()) == pytest.approx(expected, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(0.5 * expected, rel=1e-5)


class _QuickWinsSlowLosses:
    """Two far-start environments: env 0 succeeds every step, env 1 fails once every 10 steps."""
    num_envs = 2

    def __init__(self, obs_shape: tuple[int, ...]):
        self.t, self.obs_shape = 0, obs_shape

    def reset(self):
        return np.zeros((2, *self.obs_shape), np.uint8)

    def step(self, actions):
        from envs.base import Episode, VecStep
        self.t += 1
        episodes = [Episode(1.0, 1, 0)] + ([Episode(0.0, 10, 1)] if self.t % 10 == 0 else [])
        done = np.array([True, self.t % 10 == 0])
        return VecStep(self.reset(), np.zeros(2, np.float32), done, np.zeros(2, bool), episodes)

    def close(self):
        pass


def test_far_success_counts_each_environment_s_share_not_the_quickest_episodes(pretrained, monkeypatch):
    agent = finetuner(pretrained, "ft")
    shape = tuple(agent.data_obs.shape[1:])
    monkeypatch.setattr(agent, "_far_envs", lambda n, seed: _QuickWinsSlowLosses(shape))
    success, ret = agent.far_success(agent.actor, episodes=8, seed=0)
    assert success == 0.5 and ret == 0.5  # first-finished counting would give 7/8


def test_success_share_is_the_goal_share_of_the_last_tenth_of_training_episodes(tmp_path):
    rows = ["step,charts/episodic_return,losses/x", "10,0.0,", "50,,1.0", "91,0.5,", "95,0.0,", "100,0.7,"]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    assert finetune.success_share(tmp_path) == pytest.approx(2 / 3)  # the episodes ended at steps 91, 95, 100
    (tmp_path / "metrics.csv").write_text("step,losses/x\n10,1.0\n")
    assert np.isnan(finetune.success_share(tmp_path))


def test_runner_pretrains_on_demand_reuses_it_and_logs_far_success(tmp_path, capsys):
    common = [f"--results-dir={tmp_path}", "--pretrain-steps=128", "--total-steps=128", "--set",
              "run.eval_interval=64", "--set", "run.eval_episodes=2", "--set", "finetune.data_steps=64", *TINY]
    assert finetune.main(["--method=bc", "--run-name=bc", *common]) == 0
    assert "warning: the pre-trained policy" in capsys.readouterr().err  # 128 steps learn nothing of the far part
    assert finetune.main(["--method=ewc", "--run-name=ewc", *common]) == 0
    assert "(reused)" in capsys.readouterr().err
    pre = tmp_path / "finetune" / "pretrain-NearFar-s1-128"
    assert json.loads((pre / "summary.json").read_text())["status"] == "completed"
    for name in ("bc", "ewc"):
        run = tmp_path / "finetune" / name
        evals = json.loads((run / "eval.json").read_text())["evaluations"]
        assert [e["step"] for e in evals] == [64, 128]
        far = evals[-1]["far"]
        assert 0 <= far["success"] <= 1 and 0 <= far["success_pretrained"] <= 1 and far["kl_from_pretrained"] >= 0
        header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
        assert "eval/far/success" in header and f"losses/{name}" in header
        assert any(h.startswith("plasticity/srank/") for h in header)


def test_bad_input_is_one_line_and_exit_2(pretrained, tmp_path, capsys):
    assert finetune.main(["--method=distill", f"--results-dir={tmp_path}"]) == 2
    assert capsys.readouterr().err.strip() == ("error: unknown method 'distill'; valid methods: ft, freeze, "
                                               "kickstart, bc, ewc, scratch")
    assert finetune.main(["--env=Montezuma", f"--results-dir={tmp_path}"]) == 2
    assert "valid testbeds: NearFar" in capsys.readouterr().err
    assert finetune.main([f"--pretrained={tmp_path / 'nowhere'}", f"--results-dir={tmp_path}", *TINY]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    other = tmp_path / "other"
    assert main("minigrid", ["--agent=ppo", f"--env={FAR_ID}", "--total-steps=64", f"--results-dir={other}",
                             "--run-name=wide", "--set", "ppo.hidden=32", *TINY]) == 0
    capsys.readouterr()
    assert finetune.main([f"--pretrained={other / 'minigrid' / 'wide'}", f"--results-dir={tmp_path}", *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has another network or observation space" in err[0]
    assert not (tmp_path / "finetune").exists() or not any((tmp_path / "finetune").iterdir())


def test_resume_of_a_finetuning_run_is_exact(pretrained, tmp_path):
    args = [f"--pretrained={pretrained}", f"--results-dir={tmp_path}", "--method=kickstart", *TINY]
    assert finetune.main([*args, "--total-steps=128", "--run-name=full"]) == 0
    assert finetune.main([*args, "--total-steps=64", "--run-name=half"]) == 0
    half = tmp_path / "finetune" / "half"
    assert finetune.main(["--resume", str(half), "--total-steps=128"]) == 0
    full = np.loadtxt(tmp_path / "finetune" / "full" / "metrics.csv", delimiter=",", skiprows=1, usecols=range(4))
    resumed = np.loadtxt(half / "metrics.csv", delimiter=",", skiprows=1, usecols=range(4))
    np.testing.assert_array_equal(full, resumed)


def test_run_progress_names_completed_resumable_and_fresh_runs(tmp_path):
    from runners.rundir import run_progress
    run = tmp_path / "r"
    assert run_progress(run) == "start"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    assert run_progress(run) == "start" and not run.exists()  # died before its first checkpoint: removed
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest.pt").write_bytes(b"")
    assert run_progress(run) == "resume"
    (run / "summary.json").write_text(json.dumps({"status": "completed"}))
    assert run_progress(run) == "completed"


def test_the_page_takes_the_first_competent_pretraining_seeds_or_says_why_not(monkeypatch, tmp_path):
    import importlib

    from configs import ConfigError
    page = importlib.import_module("runners.experiments.forgetting")
    shares = {1: 0.8, 2: 1.0, 3: 0.95, 4: 0.0, 5: 1.0, 6: 0.2}
    tried = []

    def run_arms(arms, seeds, *args):
        tried.extend(seeds)
        return {("pretrain", s): tmp_path / str(s) for s in seeds}
    monkeypatch.setattr(page, "run_arms", run_arms)
    monkeypatch.setattr(page, "success_share", lambda run_dir: shares[int(run_dir.name)])
    assert page.competent_seeds(False, 3, "e", tmp_path) == ([2, 3, 5], {s: shares[s] for s in range(1, 7)})
    assert tried == [1, 2, 3, 4, 5, 6]
    monkeypatch.setattr(page, "CANDIDATES", 4)
    with pytest.raises(ConfigError, match="only 2 of 4 pre-training seeds learned the far part"):
        page.competent_seeds(False, 3, "e", tmp_path)
