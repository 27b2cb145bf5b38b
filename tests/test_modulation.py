"""L2M's modulations and key pool (agents/modulation.py): identity at initialisation, per-sample slots, the usage
penalty and top-1 selection by hand."""
import math

import pytest
import torch

from agents.modulation import IA3, KeyPool, LoRA, masked_mean, penalised_similarity
from agents.transformer import CausalTransformer, TransformerConfig

D, L = 16, 2


def transformer() -> CausalTransformer:
    torch.manual_seed(0)
    return CausalTransformer(TransformerConfig(n_layer=L, d_model=D, n_head=2, max_tokens=12, embd_dropout=0.0,
                                               attn_dropout=0.0, resid_dropout=0.0, positions="none")).eval()


@pytest.mark.parametrize("make", [lambda: LoRA(3, L, D, rank=4), lambda: IA3(3, L, D)])
def test_a_fresh_modulation_leaves_the_model_unchanged(make):
    model, x = transformer(), torch.randn(4, 6, D)
    before = model(x)
    modulation = make()
    modulation.attach(model)
    modulation.select(torch.tensor([0, 1, 2, 1]))
    torch.testing.assert_close(model(x), before, atol=1e-6, rtol=0)


def test_each_sample_gets_its_own_slots_low_rank_update():
    torch.manual_seed(1)
    lora = LoRA(2, 1, D, rank=2)
    for p in (lora.b_q, lora.b_v, lora.b_fc):
        p.data.normal_()
    base = torch.nn.Linear(D, 3 * D)
    x = torch.randn(2, 5, D)
    lora.select(torch.tensor([1, 0]))
    out = lora.qkv(0, x, base(x))
    for b, slot in enumerate((1, 0)):  # W' = W + s * (A B) on the query and value thirds, the key untouched
        dq = x[b] @ lora.a_q[slot, 0] @ lora.b_q[slot, 0] * lora.scaling
        dv = x[b] @ lora.a_v[slot, 0] @ lora.b_v[slot, 0] * lora.scaling
        torch.testing.assert_close(out[b], base(x[b]) + torch.cat([dq, torch.zeros_like(dq), dv], -1))
    assert lora.scaling == 2.0  # L2M: alpha = 2 * rank


def test_ia3_scales_key_value_and_the_feed_forward_activation():
    ia3 = IA3(2, 1, D)
    ia3.l_k.data[1].fill_(2.0)
    ia3.l_v.data[1].fill_(3.0)
    ia3.l_ff.data[1].fill_(0.5)
    ia3.select(torch.tensor([1]))
    out = ia3.qkv(0, torch.zeros(1, 1, D), torch.ones(1, 1, 3 * D))
    assert out[0, 0, :D].eq(1).all() and out[0, 0, D:2 * D].eq(2).all() and out[0, 0, 2 * D:].eq(3).all()
    assert ia3.act(0, torch.zeros(1, 1, 4 * D), torch.ones(1, 1, 4 * D)).eq(0.5).all()


def test_selection_without_a_slot_per_sample_is_refused():
    lora = LoRA(2, 1, D, rank=2)
    with pytest.raises(ValueError, match="0..1"):
        lora.select(torch.tensor([2]))
    lora.select(torch.tensor([0]))
    with pytest.raises(RuntimeError, match="one slot per sample"):
        lora.fc(0, torch.zeros(3, 1, D), torch.zeros(3, 1, 4 * D))


def test_masked_mean_and_the_usage_penalty_by_hand():
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert masked_mean(x, torch.tensor([[True, True, False]])).item() == 2.0
    cos = torch.tensor([[0.0, 0.5]])
    counts = torch.tensor([0.75, 0.25])  # inverse 4/3 and 4, normalised 0.25 and 0.75
    expected = torch.tensor([[0.5 * 0.25, 0.75 * 0.75]])
    torch.testing.assert_close(penalised_similarity(cos, counts), expected, atol=1e-5, rtol=0)


def test_top1_selection_counts_and_the_penalty_from_the_second_task_on():
    pool = KeyPool(2, 2)
    pool.keys.data = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    query = torch.tensor([[1.0, 0.2], [1.0, 0.1], [0.1, 1.0], [1.0, 0.0]])
    chosen, pull = pool.select(query)
    assert chosen.tolist() == [[0], [0], [1], [0]]
    cos = torch.nn.functional.normalize(query, dim=-1)
    assert pull.item() == pytest.approx(float((cos[[0, 1, 3], 0].sum() + cos[2, 1]) / 4))
    torch.testing.assert_close(pool.counts, torch.tensor([0.75, 0.25]))  # the first batch's shares
    pool.start_task(1)  # key 0 was used 3x more: task 1 now prefers key 1 unless the cosine says clearly otherwise
    chosen, _ = pool.select(torch.tensor([[1.0, 0.2]]))  # cos 0.98 vs 0.196: 0.99 * 0.25 < 0.598 * 0.75
    assert chosen.tolist() == [[1]]
    pool.eval()  # no penalty and no counting outside training
    counts = pool.counts.clone()
    assert pool.select(torch.tensor([[1.0, 0.2]]))[0].tolist() == [[0]]
    torch.testing.assert_close(pool.counts, counts)
    assert math.isclose(float(pool.counts.sum()), 1.0, rel_tol=1e-6)


def test_each_tasks_own_key_is_the_one_its_training_inputs_chose_most():
    pool = KeyPool(3, 2, max_tasks=2)
    pool.keys.data = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    pool.select(torch.tensor([[0.0, 1.0], [0.1, 1.0], [1.0, 0.0]]))  # task 0 trains: keys 1, 1, 0
    pool.start_task(1)
    pool.select(torch.tensor([[-1.0, 0.0]] * 4))  # task 1: key 2 (also under the penalty)
    assert pool.usage.tolist() == [[1.0, 2.0, 0.0], [0.0, 0.0, 4.0]]
    pool.eval()
    pool.recorded = []
    chosen, _ = pool.select(torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.1], [-1.0, 0.0]]))
    chosen = chosen[:, 0]
    assert [c.tolist() for c in pool.recorded] == [chosen.tolist()] == [[1, 0, 2, 2]]
    assert pool.own_key_share(chosen[:2], 0) == 0.5 and pool.own_key_share(chosen[2:], 1) == 1.0


@torch.no_grad()
def test_prompts_join_every_block_and_are_cut_off_after_it():
    from agents.modulation import PromptPool
    model, x = transformer(), torch.randn(2, 6, D)
    plain = model(x)
    prompts = PromptPool(pool_size=4, n_layer=L, length=3, d_model=D, top_k=2)
    prompts.pool.eval()
    query = torch.randn(2, D)
    pull = prompts.select(query)
    cos = prompts.pool.cosine(query)
    assert prompts.selected.tolist() == cos.topk(2, dim=-1).indices.tolist()
    assert pull.item() == pytest.approx(float(cos.gather(1, prompts.selected).sum(1).mean()))  # L2P's reduce_sim
    assert prompts.tokens(0).shape == (2, 2 * 3, D)
    prompts.attach(model)
    out = model(x)
    assert out.shape == plain.shape and not torch.allclose(out, plain)  # the tokens attend to the prompts
    later = x.clone()
    later[:, -1] += 1.0
    torch.testing.assert_close(model(later)[:, :-1], out[:, :-1])  # still causal among the tokens
    with pytest.raises(ValueError, match="top_k=5"):
        PromptPool(4, L, 3, D, top_k=5)
