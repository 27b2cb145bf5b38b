"""The action models (LRAM and its baselines): backbones step == parallel, states never aliased, the action
tokens and the shared head, training windows, Meta-World and its demonstrations, the runner end to end."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("xlstm")
pytest.importorskip("mambapy")

from agents.action_model import (  # noqa: E402
    N_DISCRETE,
    TOKENIZER,
    VOCAB,
    ActionModel,
    DomainWindows,
    action_loss,
    domain_actions,
)
from agents.backbones import MambaBackbone, TransformerBackbone, XLSTMBackbone, slstm_positions  # noqa: E402
from envs.action_tasks import Domain, canonical_datasets  # noqa: E402
from envs.trajectories import Trajectories  # noqa: E402

D = 32


def backbones():
    torch.manual_seed(0)
    return {"xlstm_1_0": XLSTMBackbone(D, 2, 60, "1:0"), "xlstm_7_1": XLSTMBackbone(D, 4, 60, "7:1"),
            "mamba": MambaBackbone(D, 2), "transformer": TransformerBackbone(D, 2, 4, 60)}


@pytest.mark.parametrize("name", ["xlstm_1_0", "xlstm_7_1", "mamba", "transformer"])
def test_step_by_step_equals_the_parallel_pass_and_states_are_values(name):
    bb = backbones()[name].eval()
    x = torch.randn(3, 24, D)
    with torch.no_grad():
        full = bb(x)
        state, outs = bb.start(3), []
        for t in range(24):
            if t == 10:
                kept = copy.deepcopy(state)
                mid = state
            y, state = bb.step(x[:, t], state)
            outs.append(y)
        torch.testing.assert_close(torch.stack(outs, 1), full, atol=1e-5, rtol=1e-5)
        # what the state handed to step at t=10 holds was not written into (the transformer's cache: its valid
        # columns), and stepping from it again gives the same output
        if name == "transformer":
            n = int(mid.lengths.max())
            mid_view, kept_view = [mid.keys[..., :n, :], mid.values[..., :n, :]], [kept.keys[..., :n, :],
                                                                                    kept.values[..., :n, :]]
        else:
            mid_view, kept_view = _flat(mid), _flat(kept)
        for a, b in zip(mid_view, kept_view):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
        again, _ = bb.step(x[:, 10], mid)
        torch.testing.assert_close(again, outs[10], atol=1e-6, rtol=1e-6)


def _flat(state):
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in _flat(v)]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in _flat(v)]
    return [t for f in state.__dataclass_fields__ for t in _flat(getattr(state, f))]


@pytest.mark.parametrize("name", ["xlstm_7_1", "mamba", "transformer"])
def test_restart_puts_chosen_rows_back_at_the_start_and_leaves_the_others(name):
    bb = backbones()[name].eval()
    x = torch.randn(2, 6, D)
    with torch.no_grad():
        state = bb.start(2)
        for t in range(5):
            _, state = bb.step(x[:, t], state)
        state = bb.restart(state, torch.tensor([True, False]))
        y, _ = bb.step(x[:, 5], state)
        fresh, _ = bb.step(x[:1, 5], bb.start(1))
        cont = bb(x)[1, 5]
    torch.testing.assert_close(y[0], fresh[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y[1], cont, atol=1e-5, rtol=1e-5)


def test_a_full_transformer_cache_keeps_its_last_tokens_recomputed():
    bb = TransformerBackbone(D, 2, 4, context_tokens=6, keep_tokens=3).eval()
    x = torch.randn(1, 8, D)
    with torch.no_grad():
        state = bb.start(1)
        for t in range(7):  # the 7th token finds the cache full: tokens 3..5 are kept, the 7th is appended
            y, state = bb.step(x[:, t], state)
        torch.testing.assert_close(y, bb(x[:, 3:7])[:, -1], atol=1e-5, rtol=1e-5)
        assert int(state.lengths[0]) == 4


def test_slstm_blocks_sit_at_the_papers_positions():
    assert slstm_positions("1:0", 8) == []
    assert slstm_positions("7:1", 8) == [1]
    assert slstm_positions("7:1", 12) == [1, 3]
    assert slstm_positions("7:1", 16) == [1, 3]
    assert slstm_positions("7:1", 20) == [1, 3, 5]
    assert slstm_positions("0:1", 3) == [0, 1, 2]


def test_action_binning_round_trip_and_the_shared_heads_offsets():
    bins = np.arange(256) + N_DISCRETE
    assert (TOKENIZER.tokens(TOKENIZER.values(bins)) == bins).all()  # bin -> value -> bin
    assert TOKENIZER.tokens(np.array([-1.0, -0.99, 0.0, 0.999, 1.0, 7.0])).tolist() == [18, 19, 146, 273, 273, 273]
    assert TOKENIZER.values(np.array([18, 146, 273])).tolist() == [-1.0, 0.0, 0.9921875]  # left edges, as LRAM
    assert VOCAB == 18 + 256
    logits = torch.full((2, 4, VOCAB), -10.0)
    logits[0, 0, 7] = logits[1, 0, 2] = 5.0  # discrete: action 7 is outside a 5-action domain, so 2nd best wins
    logits[0, 0, 3] = 1.0
    assert domain_actions(logits, Domain("grid", ("a",), 1.0, n_actions=5)).tolist() == [3, 2]
    cont = torch.full((1, 4, VOCAB), -10.0)
    cont[0, :, 5] = 9.0  # a discrete token: ignored by a continuous domain
    cont[0, torch.arange(4), torch.tensor([18, 146, 273, 150])] = 5.0
    torch.testing.assert_close(domain_actions(cont, Domain("mw", ("a",), 1.0, act_dim=4)),
                               torch.tensor([[-1.0, 0.0, 0.9921875, 4 * 2 / 256]]))


def test_action_loss_is_the_cross_entropy_over_valid_dimensions_only():
    logits = torch.zeros(1, 2, 2, VOCAB)
    logits[0, 0, 0, 20] = 2.0
    tokens = torch.tensor([[[20, -100], [-100, -100]]])
    ce, accuracy = action_loss(logits, tokens)
    expected = -torch.log_softmax(logits[0, 0, 0], -1)[20]
    torch.testing.assert_close(ce, expected)
    assert float(accuracy) == 1.0


def trajectories(discrete: bool) -> list[Trajectories]:
    rng = np.random.default_rng(0)
    episode = np.repeat([0, 1], [5, 3])
    actions = rng.integers(5, size=8) if discrete else rng.uniform(-1, 1, (8, 2)).astype(np.float32)
    return [Trajectories("d", "t", rng.normal(size=(8, 3)).astype(np.float32), actions,
                         np.arange(8, dtype=np.float32), episode)]


def test_windows_pad_past_the_episode_end_and_scale_returns():
    dom = Domain("d", ("t",), 2.0, act_dim=2)
    w = DomainWindows(dom, trajectories(False), state_dim=5, max_act_dim=3)
    w.starts = np.array([6])  # the second episode's second step: 2 valid steps of a 4-step window
    b = w.sample(1, 4, np.random.default_rng(0), torch.device("cpu"))
    assert b["mask"].tolist() == [[True, True, False, False]]
    assert b["rtg"].tolist() == [[(6 + 7) / 2, 7 / 2, 0, 0]]  # returns-to-go within the episode, / scale
    assert b["rewards"].tolist() == [[3.0, 3.5, 0, 0]]
    assert b["states"].shape == (1, 4, 5) and float(b["states"][0, :, 3:].abs().sum()) == 0  # zero-padded
    assert (b["actions"][0, :2, 2] == -100).all() and (b["actions"][0, 2:] == -100).all()
    assert (b["actions"][0, :2, :2] >= N_DISCRETE).all()
    assert w.best_return == {"t": float(5 + 6 + 7)}
    assert b["timesteps"].tolist() == [[1, 2, 0, 0]]  # the steps' indices in their episode, 0 where padded


@pytest.mark.parametrize("name", ["xlstm_7_1", "mamba", "transformer"])
def test_the_models_rollout_api_gives_the_training_logits(name):
    model = ActionModel(backbones()[name], D, state_dim=3, max_act_dim=2).eval()
    w = DomainWindows(Domain("d", ("t",), 2.0, act_dim=2), trajectories(False), 3, 2)
    w.starts = np.array([0])
    b = w.sample(1, 5, np.random.default_rng(0), torch.device("cpu"))
    with torch.no_grad():
        full = model(**b)
        state, steps = model.backbone.start(1), []
        for t in range(5):
            logits, state = model.act(state, b["states"][:, t], b["rtg"][:, t])
            state = model.observe(state, b["rewards"][:, t])
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_dataset_names_are_canonical():
    assert canonical_datasets("DarkRoom, metaworld") == "metaworld,darkroom"


# -- Meta-World --------------------------------------------------------------------------

def test_a_scripted_demonstration_succeeds_and_random_actions_do_not():
    pytest.importorskip("metaworld")
    from envs.metaworld import HORIZON, MetaWorldTasks, demonstrations
    expert = demonstrations("reach", 3, seed=0, noise=0.1, epsilon=0.0)
    assert all(e.success[-1] for e in expert) and all(len(e.actions) == HORIZON for e in expert)
    assert expert[0].observations.shape == (HORIZON + 1, 39)
    env = MetaWorldTasks(["reach-v3"] * 3, seed=0)
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(HORIZON):
        _, _, success = env.step(rng.uniform(-1, 1, (3, 4)))
    assert not success.any()
    with pytest.raises(RuntimeError):
        env.step(np.zeros((3, 4)))


def test_a_reused_environment_steps_as_a_new_one():
    pytest.importorskip("metaworld")
    from envs import metaworld as mw

    def episode() -> list[np.ndarray]:
        env = mw.MetaWorldTasks(["push-v3", "push-v3"], seed=3)
        out = [env.reset(np.array([4, 9]))]
        actions = np.random.default_rng(0).uniform(-1, 1, (30, 2, 4))
        out += [np.concatenate([o, r[:, None]], 1) for o, r, _ in (env.step(a) for a in actions)]
        env.close()
        return out

    mw._IDLE.pop("push-v3", None)
    fresh = episode()
    assert len(mw._IDLE["push-v3"]) == 2  # closed: handed on, not destroyed
    idle = list(mw._IDLE["push-v3"])
    again = episode()
    assert {id(e) for e in mw._IDLE["push-v3"]} == {id(e) for e in idle}  # the same two environments, reused
    for a, b in zip(fresh, again):
        np.testing.assert_array_equal(a, b)


def test_demonstration_datasets_are_checked_and_never_overwritten(tmp_path):
    pytest.importorskip("metaworld")
    from configs import ConfigError
    from envs import trajectories as tr
    settings = tr.MetaWorldSettings(episodes=2)
    built = tr.ensure(tmp_path, "metaworld", ["reach"], 0, settings, progress=False)
    assert [p.name for p in built] == ["reach-v3"]
    data = tr.load(tmp_path, "metaworld", "reach-v3", 0, settings)
    assert data.observations.shape == (400, 39) and data.actions.shape == (400, 4) and data.num_episodes == 2
    assert tr.ensure(tmp_path, "metaworld", ["reach-v3"], 0, settings, progress=False) == []
    with pytest.raises(ConfigError, match="seed"):
        tr.ensure(tmp_path, "metaworld", ["reach-v3"], 1, settings, progress=False)
    with pytest.raises(ConfigError, match="unknown Meta-World task"):
        tr.ensure(tmp_path, "metaworld", ["reachh"], 0, settings, progress=False)
    victim = next((tmp_path / "metaworld" / "reach-v3" / "data").rglob("*.hdf5"))
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(ConfigError, match="corrupt"):
        tr.load(tmp_path, "metaworld", "reach-v3", 0, settings)


# -- the runner ---------------------------------------------------------------------------

def tiny(tmp_path: Path, agent: str, *extra: str) -> list[str]:
    section = {"lram": "lram", "dt_kv": "dt_kv", "mamba": "mamba"}[agent]
    return [f"--agent={agent}", "--datasets=metaworld,darkroom", "--total-updates=4", f"--results-dir={tmp_path}",
            "--no-progress", "--set", "env.metaworld_tasks=reach-v3", "--set", "env.darkroom_tasks=2",
            "--set", f"dataset.root={tmp_path / 'datasets'}", "--set", "dataset.metaworld_episodes=2",
            "--set", "run.eval_interval=4", "--set", "run.eval_episodes=1", "--set", "run.checkpoint_steps=2",
            "--set", f"{section}.updates_per_iteration=2", "--set", f"{section}.d_model=16",
            "--set", f"{section}.context=4", "--set", f"{section}.batch_size=2", "--set", "diagnostics.interval=1",
            *extra]


@pytest.mark.parametrize("agent", ["lram", "dt_kv", "mamba"])
def test_each_agent_trains_and_evaluates_per_task_end_to_end(tmp_path, agent):
    pytest.importorskip("metaworld")
    from runners.cli import main
    from runners.offline import translate
    assert main("offline", translate(tiny(tmp_path, agent))) == 0
    (run_dir,) = (tmp_path / "offline").iterdir()
    assert run_dir.name.startswith("metaworld+darkroom__")
    evaluation = json.loads((run_dir / "eval.json").read_text())["evaluations"][-1]
    assert set(evaluation["metaworld"]) == {"reach-v3"} and len(evaluation["darkroom"]) == 2
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "eval/metaworld/success" in header and "eval/darkroom/return" in header
    assert "losses/action_ce/metaworld" in header and "losses/action_ce/darkroom" in header
    assert all(f"plasticity/dormant_frac/policy/backbone.block_outputs.{i}" in header for i in range(2))
    assert "plasticity/dead_frac/policy/backbone.block_outputs.0" not in header


def test_resume_is_exact(tmp_path):
    pytest.importorskip("metaworld")
    from runners.cli import main
    from runners.offline import translate
    args = tiny(tmp_path, "lram", "--set", "run.eval_interval=0", "--set", "diagnostics.enabled=false")
    assert main("offline", translate([*args, "--run-name=full"])) == 0
    assert main("offline", translate([*args, "--run-name=cut", "--total-updates=2"])) == 0
    assert main("offline", ["--resume", str(tmp_path / "offline" / "cut"), "--total-updates=4"]) == 0
    full = torch.load(tmp_path / "offline" / "full" / "checkpoints" / "latest.pt", weights_only=False)["agent"]
    cut = torch.load(tmp_path / "offline" / "cut" / "checkpoints" / "latest.pt", weights_only=False)["agent"]
    for k, v in full["policy"].items():
        torch.testing.assert_close(cut["policy"][k], v, atol=0, rtol=0)


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    from runners.cli import main
    from runners.offline import translate
    assert main("offline", translate(tiny(tmp_path, "lram")[:1] + ["--datasets=metaworld,atari"])) == 2
    assert "unknown dataset combination 'metaworld,atari'" in capsys.readouterr().err
    pytest.importorskip("metaworld")
    args = tiny(tmp_path, "lram", "--set", "env.metaworld_tasks=reach-v3,nope")
    assert main("offline", translate(args)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown Meta-World task 'nope'" in err
    assert not (tmp_path / "offline").exists() or not any((tmp_path / "offline").iterdir())


@pytest.mark.parametrize("module,make", [
    ("xlstm", lambda: XLSTMBackbone(D, 1, 12)),
    ("mambapy", lambda: MambaBackbone(D, 1)),
])
def test_a_missing_backbone_package_is_a_one_line_error(monkeypatch, module, make):
    import sys

    from configs import ConfigError
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, f"{module}.mamba", None)
    with pytest.raises(ConfigError, match="plasticity-suite\\[lram\\]"):
        make()


def test_missing_meta_world_is_a_one_line_error(monkeypatch):
    import sys

    from configs import ConfigError
    from envs.metaworld import import_metaworld
    monkeypatch.setitem(sys.modules, "metaworld", None)
    with pytest.raises(ConfigError, match="plasticity-suite\\[metaworld\\]"):
        import_metaworld()


def test_a_dataset_another_process_built_meanwhile_is_checked_not_an_error(tmp_path, monkeypatch):
    pytest.importorskip("metaworld")
    from envs import trajectories as tr
    settings = tr.MetaWorldSettings(episodes=1)
    real_build = tr.build

    def race(root, domain, task, seed, settings, progress=None, source=None):  # the other process wins first
        real_build(root, domain, task, seed, settings, progress, source)
        return real_build(root, domain, task, seed, settings, progress, source)
    monkeypatch.setattr(tr, "build", race)
    assert tr.ensure(tmp_path, "metaworld", ["reach-v3"], 0, settings, progress=False) == []
    assert tr.load(tmp_path, "metaworld", "reach-v3", 0, settings).num_episodes == 1


@torch.no_grad()
def test_xlstm_memory_norms_are_the_stored_memory_times_its_stabiliser():
    torch.manual_seed(0)
    bb = XLSTMBackbone(D, 4, 60, "7:1")  # sLSTM at block 1
    state = bb.start(3)
    for _ in range(5):
        _, state = bb.step(torch.randn(3, D), state)
    c, _, m = state["block_0"]["mlstm_state"]  # (B, H, dh, dh) stored as C * exp(-m), m per head
    _, cell, _, m_cell = state["block_1"]["slstm_state"]  # (B, D), m per unit
    norms = bb.memory_norms(state)
    assert norms["block_0/C_log_norm"] == pytest.approx(float((c * m.exp()).flatten(1).norm(dim=1).log().mean()),
                                                        rel=1e-5)
    assert norms["block_1/c_log_norm"] == pytest.approx(float((cell * m_cell.exp()).norm(dim=1).log().mean()),
                                                        rel=1e-5)
    assert set(norms) == {f"block_{i}/{p}" for i in (0, 2, 3) for p in ("C_log_norm", "n_log_norm")} | \
        {"block_1/c_log_norm", "block_1/n_log_norm"}
    mamba = MambaBackbone(D, 2)
    assert set(mamba.memory_norms(mamba.start(3))) == {"layer_0/h_norm", "layer_1/h_norm"}
    assert TransformerBackbone(D, 1, 4, 60).memory_norms(None) == {}


# -- MinAtar: demonstrations of the suite's own trained policies ---------------------------

@pytest.fixture(scope="module")
def minatar_root(tmp_path_factory):
    """Breakout demonstrations of a PPO policy trained on demand for 2 iterations (seconds)."""
    pytest.importorskip("minatar")
    from envs import trajectories as tr
    root = tmp_path_factory.mktemp("minatar_datasets")
    settings = tr.MinAtarSettings(episodes=3, budget=2048, max_steps=40)
    built = tr.ensure(root, "minatar", ["Breakout"], 0, settings, progress=False)
    assert [p.name for p in built] == ["Breakout"]
    return root, settings


def test_minatar_demonstrations_are_a_trained_runs_rollouts_checked_like_the_others(minatar_root):
    from configs import ConfigError
    from envs import trajectories as tr
    root, settings = minatar_root
    data = tr.load(root, "minatar", "Breakout", 0, settings)
    assert data.num_episodes == 3 and data.actions.dtype == np.int64 and data.actions.max() < 6
    assert data.observations.shape[1] == 4 * 10 * 10 and set(np.unique(data.observations)) <= {0.0, 1.0}
    lengths = np.bincount(data.episode)
    assert lengths.max() <= settings.max_steps
    manifest = json.loads((root / "minatar" / "Breakout" / "trajectories.json").read_text())
    assert manifest["source_agent"] == "ppo" and manifest["source_budget"] == 2048
    assert Path(manifest["source_run"]).name == "Breakout-ppo-2048-s0"
    assert tr.ensure(root, "minatar", ["Breakout"], 0, settings, progress=False) == []  # reused, checked
    with pytest.raises(ConfigError, match="budget"):
        tr.load(root, "minatar", "Breakout", 0, tr.MinAtarSettings(episodes=3, budget=4096, max_steps=40))
    with pytest.raises(ConfigError, match="unknown MinAtar game 'Pong'"):
        tr.ensure(root, "minatar", ["Pong"], 0, settings, progress=False)


def test_a_source_run_with_the_minimal_action_set_is_refused(tmp_path, capsys):
    pytest.importorskip("minatar")
    from runners.cli import main as train
    from runners.datasets import main
    assert train("minatar", ["--agent=ppo", "--env=Breakout", "--total-steps=1024", f"--results-dir={tmp_path}",
                             "--run-name=minimal", "--no-progress", "--set", "diagnostics.enabled=false"]) == 0
    capsys.readouterr()
    args = ["minatar", "--tasks", "Breakout", "--runs", str(tmp_path / "minatar" / "minimal"), "--episodes", "1",
            "--root", str(tmp_path / "data"), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "full_action_space" in err
    assert not (tmp_path / "data" / "minatar" / "Breakout").exists()


def test_minatar_tasks_step_together_and_stop_at_their_own_ends():
    pytest.importorskip("minatar")
    from envs.action_tasks import _MinAtarBatch
    env = _MinAtarBatch(["Breakout", "SpaceInvaders", "Breakout"], horizon=30, seed=0)
    obs = env.reset()
    assert obs.shape == (3, 600) and not obs[[0, 2], 400:].any()  # Breakout's 4 channels, zero-padded to 6
    for _ in range(30):
        before = env.done.copy()
        obs, reward, _ = env.step(np.array([0, 0, 0]))
        assert not reward[before].any()  # a finished game earns nothing more
    assert env.done.all()
    env.close()


def test_the_runner_trains_on_minatar_and_logs_the_memory_norms(tmp_path, minatar_root):
    from runners.cli import main
    from runners.offline import translate
    root, settings = minatar_root
    args = tiny(tmp_path, "lram", "--set", f"dataset.root={root}", "--set", "env.minatar_games=Breakout",
                "--set", f"env.minatar_max_steps={settings.max_steps}", "--set", "dataset.minatar_episodes=3",
                "--set", f"dataset.minatar_budget={settings.budget}")
    args[1] = "--datasets=minatar,darkroom"
    assert main("offline", translate(args)) == 0
    (run_dir,) = (tmp_path / "offline").iterdir()
    evaluation = json.loads((run_dir / "eval.json").read_text())["evaluations"][-1]
    assert set(evaluation["minatar"]) == {"Breakout"}
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "eval/minatar/return" in header and "losses/action_ce/minatar" in header
    assert "eval/minatar/memory/block_0/C_log_norm" in header and "eval/darkroom/memory/block_1/n_log_norm" in header


CPU_OOM = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
           "allocate 4000000000000 bytes. Error code 12 (Cannot allocate memory)")


@pytest.mark.parametrize("where,error", [("update", RuntimeError(CPU_OOM)),
                                         ("build_networks", MemoryError("Unable to allocate 7.28 TiB"))])
def test_a_batch_or_model_that_does_not_fit_memory_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, where,
                                                                          error):
    from agents.action_model import ActionModelAgent
    from runners.cli import main
    from runners.offline import translate

    def no_room(self, *args, **kwargs):
        raise error
    monkeypatch.setattr(ActionModelAgent, where, no_room)
    args = tiny(tmp_path, "lram", "--run-name=oom")
    args[1] = "--datasets=darkroom"
    assert main("offline", translate(args)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if line.startswith("error:")]) == 1, err
    assert "out of cpu memory" in err[-1] and "lram.batch_size=2" in err[-1] and "lram.context=4" in err[-1]
    run_dir = tmp_path / "offline" / "oom"
    if where == "update":  # the run had started: its initial checkpoint is kept, the summary says why it stopped
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
        assert (run_dir / "checkpoints" / "latest.pt").exists()
    else:  # nothing was written
        assert not run_dir.exists()
