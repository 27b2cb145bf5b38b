"""Rainbow's parts against hand-computed cases: sum tree, SMDP n-step targets, C51 projection, noisy
layers, MASP, the macro wrapper, frame storage; and end-to-end runs."""
import math

import numpy as np
import pytest
import torch

from agents.masp import lookahead_meta_gradient, masp_penalty, overlap_init, similarity
from agents.per import SumTree
from agents.rainbow import NoisyLinear, project_distribution
from agents.replay import ReplayBuffer
from configs import ConfigError
from envs import EnvConfig, make_vec_env
from envs.macros import MacroVecEnv, make_macros, mine_ngrams

# -- sum tree -----------------------------------------------------------------------------------

def test_sum_tree_samples_in_proportion_to_priorities():
    tree = SumTree(5)
    tree.update(np.arange(4), np.array([1.0, 2.0, 3.0, 4.0]))
    assert tree.total == 10.0 and tree.capacity == 8
    counts = np.bincount(np.concatenate([tree.sample(64, np.random.default_rng(s)) for s in range(400)]),
                         minlength=8)
    freq = counts / counts.sum()
    assert freq[:4] == pytest.approx([0.1, 0.2, 0.3, 0.4], abs=0.01)
    assert counts[4:].sum() == 0


def test_sum_tree_updates_and_finds_intervals():
    tree = SumTree(4)
    tree.update(np.array([0, 1, 2, 3]), np.array([1.0, 1.0, 1.0, 1.0]))
    tree.update(np.array([2, 2]), np.array([5.0, 3.0]))  # duplicates: the last one wins
    assert tree.total == 6.0 and tree.get(np.array([2]))[0] == 3.0
    assert tree.find(np.array([0.5, 1.5, 2.0, 4.9, 5.5])).tolist() == [0, 1, 2, 2, 3]
    assert tree.max_priority == 5.0
    with pytest.raises(ValueError):
        tree.update(np.array([0]), np.array([-1.0]))


# -- SMDP n-step targets -------------------------------------------------------------------------

def test_smdp_n_step_targets_discount_by_macro_length_and_stop_inside_episodes():
    g = 0.5
    buf = ReplayBuffer(20, 1, (1,), torch.float32, torch.device("cpu"))
    # row 0: a 2-step macro (reward already discounted inside: 1 + g * 1), row 1: primitive,
    # row 2: a 3-step macro that ended the episode after 2 of its steps (terminated), row 3: reset transition
    for t, (r, k, term, valid) in enumerate([(1.5, 2, False, True), (2.0, 1, False, True), (4.0, 2, True, True),
                                             (0.0, 1, False, False), (1.0, 1, False, True)]):
        buf.add(torch.full((1, 1), float(t)), torch.zeros(1, dtype=torch.long), torch.tensor([r]), torch.tensor([term]),
                torch.tensor([False]), torch.tensor([valid]), steps=torch.tensor([k]))
    s = buf.gather(torch.tensor([0]), g, 2)
    assert s.returns.item() == pytest.approx(1.5 + g ** 2 * 2.0)
    assert s.discounts.item() == pytest.approx(g ** 3) and s.next_obs.item() == 2.0
    s = buf.gather(torch.tensor([0]), g, 3)  # the episode terminates inside the third decision
    assert s.returns.item() == pytest.approx(1.5 + g ** 2 * 2.0 + g ** 3 * 4.0) and s.discounts.item() == 0.0


# -- C51 ------------------------------------------------------------------------------------------

def test_c51_projection_hand_computed():
    support = torch.tensor([0.0, 1.0, 2.0])
    p = torch.tensor([[0.2, 0.5, 0.3]])
    # r = 0.5, discount 0.5: z -> 0.5, 1.0, 1.5 -> masses split between neighbours
    m = project_distribution(p, torch.tensor([0.5]), torch.tensor([0.5]), support)
    assert m[0].tolist() == pytest.approx([0.1, 0.1 + 0.5 + 0.15, 0.15])
    # terminal (discount 0) with r = 3 clips to v_max; r landing on an atom keeps all mass there
    terminal = torch.tensor([0.0])
    assert project_distribution(p, torch.tensor([3.0]), terminal, support)[0].tolist() == pytest.approx([0, 0, 1])
    assert project_distribution(p, torch.tensor([1.0]), terminal, support)[0].tolist() == pytest.approx([0, 1, 0])
    assert m.sum().item() == pytest.approx(1.0)


def test_noisy_layer_uses_factorised_noise():
    layer = NoisyLinear(3, 2, sigma0=0.5)
    layer.reset_noise(torch.Generator().manual_seed(0))
    def f(x: torch.Tensor) -> torch.Tensor:
        return x.sign() * x.abs().sqrt()

    g = torch.Generator().manual_seed(0)
    assert torch.allclose(layer.eps_in, f(torch.randn(3, generator=g)))
    assert torch.allclose(layer.eps_out, f(torch.randn(2, generator=g)))
    x = torch.randn(4, 3, generator=g)
    w = layer.weight_mu + layer.weight_sigma * torch.outer(layer.eps_out, layer.eps_in)
    assert torch.allclose(layer(x), x @ w.T + layer.bias_mu + layer.bias_sigma * layer.eps_out)
    # gradients as through the explicit noisy weight: dL/dsigma = dL/dW * eps_out eps_in^T
    layer(x).sum().backward()
    grad_w = torch.ones(4, 2).T @ x
    # an absolute tolerance: grad_w sums x over the batch, and a sum that nearly cancels keeps little relative precision
    assert torch.allclose(layer.weight_mu.grad, grad_w, atol=1e-6)
    assert torch.allclose(layer.weight_sigma.grad, grad_w * torch.outer(layer.eps_out, layer.eps_in), atol=1e-6)
    assert torch.linalg.matrix_rank(torch.outer(layer.eps_out, layer.eps_in)) == 1
    assert layer.weight_sigma[0, 0].item() == pytest.approx(0.5 / math.sqrt(3))


# -- MASP -----------------------------------------------------------------------------------------

def test_masp_penalty_is_zero_for_equal_q_values_and_hand_computed_otherwise():
    s = similarity(torch.zeros(3, 3))
    assert torch.allclose(s, 0.5 * (1 - torch.eye(3)))
    assert masp_penalty(torch.full((4, 3), 2.0), s).item() == 0.0
    q = torch.tensor([[0.0, 1.0, 3.0]])
    # sum_{i != j} 0.5 (qi - qj)^2 = 0.5 * 2 * (1 + 9 + 4) = 14; sum S = 3
    assert masp_penalty(q, s).item() == pytest.approx(14 / 3)


def test_masp_meta_gradient_has_the_expected_sign_on_a_constructed_problem():
    """Three actions: 0 and 1 have equal true values, 2 a very different one. One look-ahead step on the
    penalty alone moves the Q-values; the meta-loss (distance to the true values) falls when 0 and 1 are
    pulled together and rises when 0 and 2 are, so gradient descent on W raises S_01 and lowers S_02."""
    params = {"q": torch.tensor([1.5, 0.5, 5.0], requires_grad=True)}  # Q(s, a) for one state
    true_q = torch.tensor([1.0, 1.0, 5.0])

    def inner_loss(p, s):
        return masp_penalty(p["q"][None, :], s)

    def meta_loss(p):
        return ((p["q"] - true_q) ** 2).sum()

    grad_w, meta = lookahead_meta_gradient(torch.zeros(3, 3), params, inner_loss, meta_loss, inner_lr=0.1)
    # by hand: S = 1/2 off the diagonal, so R = (1/3) sum_{i<j} (q_i - q_j)^2, grad_q R = (-5, -11, 16) / 3,
    # q' = q - 0.1 grad = (5/3, 13/15, 67/15), meta = (2/3)^2 + (2/15)^2 + (8/15)^2 = 0.74667
    assert meta.item() == pytest.approx(4 / 9 + 4 / 225 + 64 / 225, rel=1e-5)
    sym = grad_w + grad_w.T
    assert sym[0, 1] < 0  # descent raises the similarity of the equal-valued pair
    assert sym[0, 2] > 0  # and lowers that of the dissimilar pair
    # scale-free meta-steps (Adam, as the agent): a gradient 1e-8 times smaller moves W just as far
    moved = []
    for scale in (1.0, 1e-8):
        w = torch.zeros(3, 3)
        opt = torch.optim.Adam([w], lr=0.1, eps=1e-16)
        for _ in range(5):
            g, _ = lookahead_meta_gradient(w, params, inner_loss, lambda p: scale * meta_loss(p), 0.1)
            w.grad = g
            opt.step()
        moved.append(similarity(w))
    assert moved[0][0, 1] > 0.6 and moved[0][0, 2] < 0.4
    assert torch.allclose(moved[0], moved[1], atol=1e-3)


def test_overlap_initialisation():
    w = overlap_init([[0], [1], [0, 0], [1, 1], [0, 1]])
    assert w[0, 2] == 2.0 and w[2, 0] == 2.0 and w[1, 3] == 2.0 and w[0, 4] == 2.0 and w[2, 4] == 2.0
    assert w[0, 1] == 0.0 and w[0, 3] == 0.0 and w[2, 2] == 0.0


# -- macros ---------------------------------------------------------------------------------------

def classic(num_envs=2):
    cfg = EnvConfig(id="CartPole-v1", backend="envpool", num_envs=num_envs, threads=0, frame_skip=1, max_pool=True,
                    sticky_action_prob=0.0, noop_max=1, fire_reset=False, episodic_life=False, reward_clip=False,
                    max_episode_frames=0, full_action_space=False, image_size=84, stack=1)
    return make_vec_env("classic", cfg, seed=0)


def test_macro_specs():
    assert make_macros("repeat:2,4", 2) == [[0, 0], [1, 1], [0, 0, 0, 0], [1, 1, 1, 1]]
    assert make_macros("list:[[0, 1], [1, 1, 0]]", 2) == [[0, 1], [1, 1, 0]]
    assert make_macros("", 3) == []
    for bad, msg in [("repeat:1", ">= 2"), ("list:[[0, 5]]", "actions must be integers in"),
                     ("chunks:2", "unknown macro spec"), ("list:[[0]]", "length >= 2")]:
        with pytest.raises(ConfigError, match=msg):
            make_macros(bad, 2)


def test_macro_wrapper_reward_and_step_accounting():
    env = MacroVecEnv(classic(), [[0, 1, 0]], gamma=0.5)
    env.reset()
    assert env.single_action_space.n == 3 and env.actions == [[0], [1], [0, 1, 0]]
    s1 = env.step(np.array([2, 1]))  # env 0 starts the 3-step macro, env 1 a primitive
    assert s1.completed.tolist() == [False, True] and s1.steps.tolist() == [0, 1] and s1.reward[1] == 1.0
    s2 = env.step(np.array([0, 0]))  # env 0 ignores the new action: mid-macro
    assert s2.completed.tolist() == [False, True]
    s3 = env.step(np.array([0, 0]))
    assert s3.completed.tolist() == [True, True] and s3.steps.tolist() == [3, 1]
    assert s3.reward[0] == pytest.approx(1 + 0.5 + 0.25)  # CartPole pays 1 per step
    # an episode that ends inside a macro stops it there
    env = MacroVecEnv(classic(1), [[0] * 50], gamma=1.0)
    env.reset()
    step = env.step(np.array([2]))  # push left 50 times: the pole falls long before
    while not step.completed[0]:
        step = env.step(np.array([2]))
    assert step.terminated[0] and step.steps[0] < 50 and step.reward[0] == step.steps[0]


def test_after_an_episode_ends_the_agent_decides_afresh_at_the_new_episodes_first_observation():
    env = MacroVecEnv(classic(1), [[0] * 50], gamma=1.0)
    env.reset()
    step = env.step(np.array([2]))
    while not step.completed[0]:
        step = env.step(np.array([2]))
    assert step.terminated[0]
    reset = env.step(np.array([2]))  # the macro, chosen at the terminal observation
    assert reset.completed[0] and reset.steps[0] == 1, "the autoreset step must complete alone"
    assert not reset.terminated[0] and env.queue[0] == [], "no macro may run on into the new episode"
    first = env.step(np.array([1]))  # chosen at the new episode's first observation: it runs
    assert first.completed[0] and first.steps[0] == 1 and not first.terminated[0]


def test_ngram_mining_stays_within_episodes():
    actions = np.array([[0], [1], [0], [1], [2], [0], [1]])
    valid = np.array([[True], [True], [True], [True], [False], [True], [True]])
    assert mine_ngrams(actions, valid, [2], top=1, num_primitives=3) == [[0, 1]]
    assert mine_ngrams(actions, valid, [3], top=5, num_primitives=3) == [[0, 1, 0], [1, 0, 1]]


# -- frame storage ----------------------------------------------------------------------------------

def test_frame_storage_rebuilds_the_exact_stacks_across_episode_ends_and_ring_wrap():
    cfg = EnvConfig(id="Pong", backend="ale", num_envs=2, threads=0, frame_skip=3, max_pool=True,
                    sticky_action_prob=0.25, noop_max=1, fire_reset=False, episodic_life=False, reward_clip=True,
                    max_episode_frames=60, full_action_space=False, image_size=84, stack=4)
    env = make_vec_env("atari", cfg, seed=0)
    obs = torch.from_numpy(env.reset())
    frames = ReplayBuffer(2 * 50, 2, (4, 84, 84), torch.uint8, torch.device("cpu"), frame_stack=True)
    full = ReplayBuffer(2 * 50, 2, (4, 84, 84), torch.uint8, torch.device("cpu"))
    prev_done = torch.zeros(2, dtype=torch.bool)
    rng = np.random.default_rng(0)
    for _ in range(130):  # episodes of 20 steps; the 50-row rings wrap
        step = env.step(rng.integers(0, 6, 2))
        args = (obs, torch.zeros(2, dtype=torch.long), torch.from_numpy(step.reward),
                torch.from_numpy(step.terminated), torch.from_numpy(step.truncated), ~prev_done)
        frames.add(*args)
        full.add(*args)
        prev_done = torch.from_numpy(step.terminated | step.truncated)
        obs = torch.from_numpy(step.obs)
    ok = frames.sampleable(1)
    rows, envs = torch.nonzero(ok, as_tuple=True)
    assert len(rows) > 60
    assert torch.equal(frames.observation(rows, envs), full.observation(rows, envs))
    assert frames.obs.numel() * 4 == full.obs.numel()


# -- end to end ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("agent,precision", [("rainbow", "fp32"), ("rainbow_masp", "fp32"), ("rainbow", "bf16")])
def test_rainbow_runs_and_logs_replay_statistics_and_similarity(agent, precision, tmp_path):
    """(Exact resume of rainbow_masp is tested with the other agents in test_runner.py.)"""
    from runners.cli import main
    args = ["--agent", agent, "--env", "Breakout", "--set", "env.num_envs=2", "--set", "rainbow.learning_starts=200",
            "--set", "rainbow.iteration_steps=200", "--set", "rainbow.buffer_size=2000", "--set",
            "rainbow.masp_period=5", "--set", "diagnostics.interval=2", "--set", "diagnostics.probe_size=128",
            "--set", f"rainbow.precision={precision}", "--results-dir", str(tmp_path), "--experiment", "t",
            "--no-progress"]
    assert main("minatar", [*args, "--total-steps", "1000", "--run-name", "full"]) == 0
    a = torch.load(tmp_path / "t" / "full" / "checkpoints" / "latest.pt", weights_only=False)["agent"]
    assert a["updates"] > 0
    lines = (tmp_path / "t" / "full" / "metrics.csv").read_text().splitlines()
    header = lines[0]
    assert "replay/priority_mean" in header and "replay/sampled_age" in header
    td = [float(v) for v in (row.split(",")[header.split(",").index("losses/td")] for row in lines[1:]) if v]
    assert td and all(0 < v < 10 for v in td)  # a cross-entropy over 51 atoms: positive and finite
    if agent == "rainbow_masp":
        assert a["masp"]["w"].shape == (3 * 3, 3 * 3) and "masp/similarity_mean" in header and "losses/masp" in header
        events = list((tmp_path / "t" / "full" / "tb").glob("events.out.tfevents.*"))
        assert events and b"masp/similarity" in events[0].read_bytes()  # the heatmap image
        # the learned similarity initialises another run (transfer)
        assert main("minatar", [*args, "--total-steps", "400", "--run-name", "transfer", "--similarity-from",
                                str(tmp_path / "t" / "full")]) == 0
        c = torch.load(tmp_path / "t" / "transfer" / "checkpoints" / "step_000000000000.pt", weights_only=False)
        assert torch.equal(c["agent"]["masp"]["w"], a["masp"]["w"])


def test_similarity_changes_reports_drift_and_agreement_between_seeds(tmp_path):
    """The masp.md table of how far S moved: two seeds that both raised S(0, 2) by the same logit
    agree perfectly (correlation +1), and the largest rise is that pair."""
    from runners.experiments import similarity_changes
    from runners.storage import CHECKPOINT_FORMAT, atomic_torch_save
    actions = [[0], [1], [0, 0]]
    run_dirs = {}
    for seed, step in ((1, 1.0), (2, 0.5)):
        w = overlap_init(actions)
        w[0, 2] += step
        w[2, 0] += step
        w[0, 1] -= step / 2
        w[1, 0] -= step / 2
        run_dir = tmp_path / f"s{seed}"
        (run_dir / "checkpoints").mkdir(parents=True)  # the atomic writers never create folders
        atomic_torch_save({"format": CHECKPOINT_FORMAT, "agent": {"masp": {"w": w}, "actions": actions}},
                          run_dir / "checkpoints" / "latest.pt")
        run_dirs[("MASP minatar Breakout", seed)] = run_dir
    run_dirs[("naive macros minatar Breakout", 1)] = tmp_path / "ignored"
    changes, lines = similarity_changes(run_dirs)
    expected = float(torch.sigmoid(torch.tensor(3.0)) - torch.sigmoid(torch.tensor(2.0)))  # overlap logit 2, +1
    assert changes["Breakout"][0][0, 2] == pytest.approx(expected, rel=1e-5)
    assert f"+{expected:.3f} (0, 0+0)" in lines[2]
    assert lines[-3] == "- Breakout: correlation between seeds +1.00"
    assert lines[-1].startswith("Mean correlation +1.00: the seeds learn a similar structure")


def test_macros_are_mined_from_a_runs_replay_in_time_order(tmp_path, capsys):
    """runners.macros reads each environment's replay ring from its oldest row (next_row) on."""
    from runners.macros import main as macros
    from runners.storage import CHECKPOINT_FORMAT, atomic_torch_save
    actions = torch.tensor([[2], [0], [1]])  # ring of 3 rows, next_row 1: time order 0, 1, 2
    replay = {"actions": actions, "valid": torch.ones(3, 1, dtype=torch.bool), "next_row": torch.tensor([1])}
    (tmp_path / "checkpoints").mkdir()
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "agent": {"replay": replay, "num_primitives": 3}},
                      tmp_path / "checkpoints" / "latest.pt")
    assert macros(["mine", str(tmp_path), "--n", "3", "--top", "1"]) == 0
    assert capsys.readouterr().out.strip() == "- [0, 1, 2]"
    assert macros(["mine", str(tmp_path / "nope")]) == 2 and "no checkpoint at" in capsys.readouterr().err


def test_a_replay_that_cannot_fit_is_refused_before_it_is_allocated(tmp_path, capsys, monkeypatch):
    """rainbow_macro on Atari stores single frames (1M x 84 x 84 bytes, 7.1 GB; full stacks were 28 GB):
    with 4 GB available the run stops at start-up with one line (size, memory available, field to lower)."""
    import agents.replay
    from runners.cli import main
    monkeypatch.setattr(agents.replay, "available_memory", lambda device: 4 * 10**9)
    rc = main("atari", ["--agent", "rainbow_macro", "--env", "Asterix", "--results-dir", str(tmp_path),
                        "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "the replay buffer" in err and "needs 7.1 GB but 4.0 GB of cpu memory is available" in err
    assert "lower rainbow.buffer_size" in err
    assert not any(tmp_path.rglob("run.json")), "a refused run left a run directory"


@pytest.mark.parametrize("suite,agent", [("minatar", "rainbow"), ("minatar", "dqn"), ("atari", "rainbow"),
                                         ("atari", "dqn"), ("atari", "rainbow_macro"), ("minatar", "rainbow_macro")])
def test_replay_returns_the_observations_the_agent_acted_on(suite, agent):
    """MinAtar's channels are objects (paddle, ball, trail, bricks), not stacked frames: its replay must
    store whole observations (it stored the bricks channel only and rebuilt "stacks" from it). Atari's
    frame stacks are stored as single frames, for DQN too; with macros, every primitive frame goes
    into a frame ring and each row's decision observation is rebuilt from it, across episode ends
    (a 30-frame episode cap makes them frequent)."""
    from runners.rundir import build_agent
    section = get_agent_spec(agent, suite).family
    sets = [("env.num_envs", "2"), (f"{section}.buffer_size", "64"), (f"{section}.learning_starts", "100000"),
            (f"{section}.iteration_steps", "2")]
    if suite == "atari":
        sets.append(("env.max_episode_frames", "120"))
    learner = build_agent(suite, agent, sets)
    checked = 0
    for _ in range(120):  # the 32-row rings wrap: the oldest rows' frames are overwritten
        acted_on = learner.next_obs.clone()
        learner.collect_step()
        if agent != "rainbow_macro":
            assert torch.equal(learner.replay.recent(2), acted_on)
            checked += 2
            continue
        for e in torch.nonzero(torch.from_numpy(np.asarray(learner.decide))).flatten().tolist():
            row = int(learner.replay.next_row[e] - 1) % learner.replay.rows  # the row written just now
            stored = learner.replay.observation(torch.tensor([row]), torch.tensor([e]))[0]
            assert torch.equal(stored, learner.pending_obs[e]), (e, row)
            checked += 1
    assert checked > 50
    expected_stack = 4 if suite == "atari" else 1
    assert learner.replay.stack == expected_stack
    if agent == "rainbow_macro" and suite == "atari":  # frames overwritten: their rows leave the sampling rule
        ok = learner.replay.sampleable(0)
        assert 0 < int(ok.sum()) < learner.replay.rows * 2


def get_agent_spec(agent, suite):
    from agents import get_agent
    return get_agent(agent, suite)


@pytest.mark.parametrize("agent", ["rainbow", "der", "rainbow_masp", "dqn", "dqn_soft_reset"])
def test_replay_agents_on_atari_use_their_own_protocol_not_pfos(agent):
    """configs/rainbow.yaml and configs/dqn.yaml convert frames at frame skip 4 (Hessel et al. 2018 /
    Mnih et al. 2015); PPO keeps the PFO paper's frame skip 3, sticky actions and 8 environments."""
    from runners.rundir import config_files, resolve
    def atari_env(name):
        spec = get_agent_spec(name, "atari")
        return resolve("atari", spec, config_files("atari", spec), [])[0]["env"]

    env = atari_env(agent)
    assert (env.frame_skip, env.sticky_action_prob, env.noop_max, env.num_envs) == (4, 0.0, 30, 1)
    ppo = atari_env("ppo_pfo")
    assert (ppo.frame_skip, ppo.sticky_action_prob, ppo.num_envs) == (3, 0.25, 8)
