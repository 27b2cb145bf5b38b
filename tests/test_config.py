"""Typed configuration: YAML layers, sources, validation, overrides."""
import dataclasses
from dataclasses import dataclass

import pytest

from agents import AGENTS, agents_for
from configs import ConfigError, apply_overrides, build_section, coerce, dump_yaml, load_layers, param, read_yaml
from envs import SUITES
from runners.cli import config_files, resolve, schema_for


@dataclass
class Toy:
    lr: float = param("learning rate", min=0.0, min_exclusive=True)
    epochs: int = param("epochs", min=1)
    mode: str = param("mode", choices=("a", "b"))
    betas: tuple[float, float] = param("betas")
    flag: bool = param("flag")


GOOD = {"lr": 2.5e-4, "epochs": 4, "mode": "a", "betas": [0.9, 0.999], "flag": True}


def test_build_section_converts_and_validates():
    toy = build_section(Toy, {**GOOD, "lr": "1e-3", "epochs": "8", "flag": "false", "betas": "[0.9, 0.9]"}, "toy")
    assert (toy.lr, toy.epochs, toy.flag, toy.betas) == (1e-3, 8, False, (0.9, 0.9))


@pytest.mark.parametrize("field,value,message", [
    ("lr", 0.0, r"toy.lr: 0.0 is out of range \(must be > 0.0\)"),
    ("epochs", 0, r"toy.epochs: 0 is out of range"),
    ("epochs", 2.5, r"toy.epochs: expected an integer"),
    ("epochs", True, r"toy.epochs: expected an integer"),
    ("mode", "c", r"toy.mode: 'c' is not one of: a, b"),
    ("flag", "maybe", r"toy.flag: expected true or false"),
    ("lr", "fast", r"toy.lr: expected a number"),
    ("betas", [0.9], r"toy.betas: expected a list of 2 values"),
])
def test_invalid_values_name_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message):
        build_section(Toy, {**GOOD, field: value}, "toy")


def test_unknown_and_missing_fields():
    with pytest.raises(ConfigError, match="unknown field 'toy.lrr'; valid fields of 'toy': betas, epochs"):
        build_section(Toy, {**GOOD, "lrr": 1}, "toy")
    missing = dict(GOOD)
    del missing["mode"]
    with pytest.raises(ConfigError, match="toy.mode has no value"):
        build_section(Toy, missing, "toy")


def test_overrides_must_name_existing_fields():
    merged = {"toy": dict(GOOD)}
    out = apply_overrides(merged, [("toy.epochs", "8")], {"toy": Toy})
    assert out["toy"]["epochs"] == "8" and merged["toy"]["epochs"] == 4
    with pytest.raises(ConfigError, match="unknown config section 'tyo'"):
        apply_overrides(merged, [("tyo.epochs", "8")], {"toy": Toy})
    with pytest.raises(ConfigError, match="unknown field 'toy.epoch'"):
        apply_overrides(merged, [("toy.epoch", "8")], {"toy": Toy})


def test_yaml_sources_are_read_from_comments(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("toy:\n  lr: 2.5e-4   # PFO code optim.lr\n  mode: 'a#b'  # quoted hash is data\n  epochs: 4\n")
    data, sources = read_yaml(f)
    assert data["toy"]["mode"] == "a#b"
    assert sources == {"toy.lr": "PFO code optim.lr", "toy.mode": "quoted hash is data"}
    g = tmp_path / "d.yaml"
    g.write_text("toy:\n  lr: 1.0e-3  # mine\n")
    merged, sources = load_layers([f, g])
    assert merged["toy"]["lr"] == 1e-3 and merged["toy"]["epochs"] == 4 and sources["toy.lr"] == "mine"


def test_unreadable_yaml_is_a_clear_error(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("toy: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        read_yaml(f)
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        read_yaml(f)


@pytest.mark.parametrize("suite,agent", [(s, a) for s in SUITES for a in agents_for(s)])
def test_every_shipped_config_resolves_and_every_field_cites_a_source(suite, agent, tmp_path):
    spec = AGENTS[agent]
    sections, sources = resolve(suite, spec, config_files(suite, spec), [])
    for name, section in sections.items():
        for f in dataclasses.fields(section):
            assert sources.get(f"{name}.{f.name}"), f"{name}.{f.name} has no source comment ({suite}, {agent})"
    # the resolved YAML, with its sources, reads back to the same sections
    text = dump_yaml(sections, sources)
    (tmp_path / "config.yaml").write_text(text)
    again, again_sources = resolve(suite, spec, [tmp_path / "config.yaml"], [])
    assert again == sections and again_sources == sources


def test_variant_and_suite_layers():
    ppo = resolve("atari", AGENTS["ppo"], config_files("atari", AGENTS["ppo"]), [])[0]["ppo"]
    pfo = resolve("atari", AGENTS["ppo_pfo"], config_files("atari", AGENTS["ppo_pfo"]), [])[0]["ppo"]
    assert ppo.pfo_coef == 0.0 and pfo.pfo_coef == 1.0
    assert dataclasses.replace(pfo, pfo_coef=0.0) == ppo  # identical settings but the PFO term
    classic = resolve("classic", AGENTS["ppo_pfo"], config_files("classic", AGENTS["ppo_pfo"]), [])[0]
    assert classic["ppo"].network == "mlp" and classic["ppo"].pfo_coef == 1.0
    assert set(schema_for(AGENTS["ppo"], "atari")) == {"run", "env", "ppo", "diagnostics", "interventions", "tracking"}


def test_coerce_optional():
    assert coerce("none", int | None, "x") is None
    assert coerce("3", int | None, "x") == 3
