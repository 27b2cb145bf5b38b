"""Every agent x intervention pair the command line accepts either works or is refused at start-up.

"Works": the agent is built through the base class's lifecycle, trains for two iterations with the
intervention's period at 1 (so that periodic interventions fire), and its losses stay finite. For the
interventions that insert normalisation layers, every hidden weight layer of every network is
followed by a norm, and NaP keeps each weight layer's norm at its initial value after training.
Refusals are one ConfigError naming the intervention and what the agent supports.
"""
import math

import pytest
import torch

from agents import AGENTS, agents_for, get_agent
from configs import ConfigError
from envs import make_vec_env
from plasticity.hooks import NORM_TYPES
from plasticity.interventions import REGISTRY, layer_weight, weight_layers
from runners.cli import main
from runners.rundir import config_files, make_agent, resolve

TINY = {
    "classic": [("env.num_envs", "2"), ("ppo.num_steps", "32"), ("ppo.minibatch_size", "32"), ("ppo.epochs", "1"),
                ("dqn.learning_starts", "16"), ("dqn.iteration_steps", "32"), ("dqn.buffer_size", "256"),
                ("dqn.batch_size", "8"), ("rainbow.learning_starts", "16"), ("rainbow.iteration_steps", "32"),
                ("rainbow.buffer_size", "256"), ("rainbow.batch_size", "8"), ("rainbow.masp_period", "1")],
    "minatar": [("env.num_envs", "2"), ("rainbow.learning_starts", "16"), ("rainbow.iteration_steps", "32"),
                ("rainbow.buffer_size", "256"), ("rainbow.batch_size", "8")],
    "supervised": [("env.synthetic_samples", "64"), ("learner.steps_per_task", "4"), ("learner.batch_size", "16"),
                   ("learner.hidden", "16")],
    "incontext": [("dataset.train_tasks", "2"), ("env.eval_heldout_tasks", "1"), ("env.eval_train_tasks", "1"),
                  ("ra_dt.embedder_updates", "2"), ("ra_dt.cache_steps", "5"), ("ra_dt.key_window", "5"),
                  *[(f"{family}.{k}", v) for family in ("dt", "ad", "ra_dt")
                    for k, v in (("n_layer", "1"), ("d_model", "16"), ("n_head", "2"), ("context", "5"),
                                 ("batch_size", "4"), ("updates_per_iteration", "2"))]],
    "offline": [("env.id", "darkroom"), ("env.darkroom_tasks", "2"),
                *[(f"{family}.{k}", v) for family in ("lram", "dt_kv", "mamba")
                  for k, v in (("d_model", "16"), ("context", "4"), ("batch_size", "2"),
                               ("updates_per_iteration", "2"))]],
}
#: per agent, what it needs besides its suite's tiny settings (L2M's pre-trained DT models continuous actions)
TINY_AGENT = {"mtdt": [("env.id", "metaworld"), ("env.metaworld_tasks", "reach-v3"),
                       ("dataset.metaworld_episodes", "2"), ("mtdt.d_model", "16"), ("mtdt.batch_size", "2"),
                       ("mtdt.updates_per_iteration", "2")]}
TINY["continual"] = [("env.tasks", "1"), ("env.stage_updates", "4"), ("env.pretrain_tasks", "reach-v3"),
                     ("dataset.metaworld_episodes", "2"), ("run.total_steps", "4"),
                     *[(f"{m}.{k}", v) for m in ("ft", "ewc", "lora", "lora_oracle", "l2m", "l2p", "multitask")
                       for k, v in (("batch_size", "2"), ("updates_per_iteration", "2"))]]
PERIODS = [("interventions.redo_period", "1"), ("interventions.sp_period", "1"), ("interventions.reset_period", "1"),
           ("interventions.rewarm_period", "2"), ("interventions.rewarm_warmup", "1")]
PAIRS = [(suite, agent, iv) for suite in ("classic", "supervised", "incontext", "offline", "continual")
         for agent in agents_for(suite)
         for iv in REGISTRY]


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    """Two Dark-Room tasks' learning histories, for the in-context agents (built on first use)."""
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture(scope="module")
def pretrained(tiny_pretrained):
    return tiny_pretrained[1]


def build(suite: str, agent: str, intervention: str, dataset_root=None, pretrained=None):
    spec = get_agent(agent, suite)
    family_fields = {f"{spec.family}."}
    overrides = [(k, v) for k, v in TINY[suite] + TINY_AGENT.get(agent, [])
                 if k.startswith(("env.", "dataset.", "run.", *family_fields))]
    if dataset_root is not None:
        overrides.append(("dataset.root", str(dataset_root)))
    if pretrained is not None:
        overrides.append((f"{spec.family}.pretrained", str(pretrained)))
    sections, _ = resolve(suite, spec, config_files(suite, spec),
                          [*overrides, *PERIODS, ("interventions.use", intervention)])
    envs = make_vec_env(suite, sections["env"], 0)
    return spec, lambda: make_agent(spec, sections, envs, torch.device("cpu"), 0)


def hidden_weight_layers(net: torch.nn.Module) -> int:
    """Weight layers that feed an activation directly (none once norms are inserted)."""
    from plasticity.hooks import ACTIVATION_KINDS
    count = 0
    for module in net.modules():
        children = list(module.children())
        count += sum(layer_weight(a) is not None and type(b) in ACTIVATION_KINDS
                     for a, b in zip(children, children[1:]))
    return count


@pytest.mark.parametrize("suite,agent,intervention", PAIRS)
def test_agent_and_intervention_work_or_are_refused_at_start_up(suite, agent, intervention, request):
    if suite in ("incontext", "offline"):
        pytest.importorskip("minari")
    if suite == "offline":
        pytest.importorskip("xlstm")
        pytest.importorskip("mambapy")
    if agent == "mtdt" or suite == "continual":
        pytest.importorskip("metaworld")
    root = request.getfixturevalue("dataset_root") if suite in ("incontext", "offline", "continual") else None
    pre = request.getfixturevalue("pretrained") if suite == "continual" else None
    spec, make = build(suite, agent, intervention, root, pre)
    unsupported = spec.load().UNSUPPORTED_INTERVENTIONS
    if intervention in unsupported:
        with pytest.raises(ConfigError, match=f"does not support the intervention '{intervention}'.*it supports: "):
            make()
        return
    learner = make()
    networks = learner.networks()
    initial = {id(w): float(w.detach().norm()) for net in networks.values() for _, m in weight_layers(net)
               if (w := layer_weight(m)) is not None}
    for _ in range(2):
        metrics, _ = learner.iterate(diagnose=False)
        assert all(math.isfinite(v) for k, v in metrics.items() if k.startswith("losses/")), metrics
    if intervention in ("nap", "layernorm_wd"):
        for name, net in networks.items():
            assert any(isinstance(m, NORM_TYPES) for m in net.modules()), name
            assert hidden_weight_layers(net) == 0, f"{name}: a weight layer feeds an activation without a norm"
    if intervention == "nap":
        for net in networks.values():
            for _, m in weight_layers(net):
                w = layer_weight(m)
                assert float(w.detach().norm()) == pytest.approx(initial[id(w)], rel=1e-4)
    if intervention == "redo":
        assert "interventions/redo_recycled" in learner.interventions.metrics()


def test_rainbow_with_redo_exits_2_with_one_line_naming_what_it_supports(tmp_path, capsys):
    rc = main("classic", ["--agent", "rainbow", "--intervention", "redo", "--results-dir", str(tmp_path),
                          "--no-progress", "--total-steps", "64"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "redo" in err and "it supports: nap, layernorm_wd" in err
    assert not any(tmp_path.rglob("run.json")), "a refused run left a run directory"


def test_nap_on_rainbow_normalises_the_trunk_and_both_heads():
    _, make = build("minatar", "rainbow", "nap")
    net = make().networks()["q"]
    for part in (net.trunk, net.advantage, net.value):
        assert any(isinstance(m, NORM_TYPES) for m in part.modules()), part


def test_agents_list_covers_every_family():
    assert {spec.family for spec in AGENTS.values()} == {"ppo", "dqn", "rainbow", "learner", "dt", "ad", "ra_dt",
                                                          "lram", "dt_kv", "mamba", "mtdt", "ft", "ewc", "lora",
                                                          "lora_oracle", "l2m", "l2p", "multitask"}
