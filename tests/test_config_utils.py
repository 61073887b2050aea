"""Tests for hf_e2e_sae.training.arguments (the generic nested-dataclass config system)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import pytest

from hf_e2e_sae.training.arguments import (
    ConfigError,
    field_docstrings,
    format_help,
    from_dict,
    is_help_requested,
    load_config,
    parse_overrides,
    save_yaml,
    to_dict,
)


@dataclass
class SparsityConfig:
    coeff: float = 1.5
    """Sparsity coefficient (the paper's lambda)."""

    p_norm: float = 1.0
    """Exponent of the Lp sparsity penalty."""

    def __post_init__(self):
        if self.coeff < 0:
            raise ValueError(f"coeff must be >= 0, got {self.coeff}")


@dataclass
class LossConfig:
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    """Sparsity penalty settings."""

    kind: Literal["e2e", "local", "e2e+ds"] = "e2e"
    """Which loss to train with."""

    weights: dict[str, float] = field(default_factory=lambda: {"out_to_in": 1.0})
    """Per-term loss weights."""


@dataclass
class TrainConfig:
    """Toy training config."""

    model: str
    """Hugging Face model id."""

    lr: float = 1e-4
    """Learning rate."""

    steps: int = 100
    """Number of optimizer steps."""

    streaming: bool = False
    """Stream the dataset."""

    sites: list[str] = field(default_factory=lambda: ["blocks.0.resid_pre"])
    """Hook sites to attach SAEs to."""

    seed: Optional[int] = None
    """Random seed (null: random)."""

    revision: Optional[str] = None
    """Model revision."""

    layers: tuple[int, ...] = (0,)
    """Layer indices."""

    out_dir: Path = Path("out")
    """Output folder."""

    width: Union[int, float] = 4
    """Dictionary width as an int or a multiple of d_model."""

    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form keyword arguments."""

    loss: LossConfig = field(default_factory=LossConfig)
    """Loss settings."""

    def __post_init__(self):
        if self.steps <= 0:
            raise ValueError("steps must be positive")


@dataclass
class _NoDocs:
    x: int = 1


@dataclass
class WithOptionalSub:
    sub: Optional[SparsityConfig] = None
    """Optional nested config."""


# ----------------------------------------------------------------------------------- overrides


def test_all_override_syntaxes_mix():
    tree = parse_overrides(["--loss.sparsity.coeff", "3", "--lr=1e-3", "steps=7", "--model", "gpt2"])
    assert tree == {"loss": {"sparsity": {"coeff": 3}}, "lr": "1e-3", "steps": 7, "model": "gpt2"}


def test_override_values_are_yaml_parsed():
    tree = parse_overrides(["--a=[1, 2]", "--b", "true", "--c=null", "--d={x: 1}", "--e", "-1", "--f="])
    assert tree == {"a": [1, 2], "b": True, "c": None, "d": {"x": 1}, "e": -1, "f": ""}


def test_later_override_wins_and_siblings_merge():
    tree = parse_overrides(["--a.b=1", "--a.c=2", "--a.b=3"])
    assert tree == {"a": {"b": 3, "c": 2}}


def test_bare_bool_flag():
    assert parse_overrides(["--streaming", "--lr", "1"]) == {"streaming": True, "lr": 1}
    cfg = load_config(TrainConfig, None, ["--model", "m", "--streaming"])
    assert cfg.streaming is True


def test_bare_flag_for_non_bool_field_is_an_error():
    with pytest.raises(ConfigError, match=r"'--steps' was given without a value; expected int"):
        load_config(TrainConfig, None, ["--model", "m", "--steps"])


@pytest.mark.parametrize(
    "bad, message",
    [(["positional"], "Unexpected argument 'positional'"), (["-x"], "Unexpected argument '-x'"),
     (["--a..b=1"], "Invalid override key 'a..b'"), (["--lr=1", "--help"], "Help requested")],
)
def test_malformed_override_tokens(bad, message):
    with pytest.raises(ConfigError, match=message):
        parse_overrides(bad)


def test_load_config_with_overrides_like_the_trainer():
    cfg = load_config(
        TrainConfig,
        None,
        ["--model", "gpt2", "--loss.sparsity.coeff", "3", "lr=1e-3", "--sites", "blocks.2.resid_pre,blocks.6.resid_pre"],
    )
    assert cfg.loss.sparsity.coeff == 3.0 and isinstance(cfg.loss.sparsity.coeff, float)
    assert cfg.lr == pytest.approx(1e-3)
    assert cfg.sites == ["blocks.2.resid_pre", "blocks.6.resid_pre"]
    assert cfg.loss.sparsity.p_norm == 1.0  # untouched default


def test_overrides_deep_merge_into_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "model: gpt2\nloss:\n  kind: local\n  sparsity:\n    coeff: 2.0\n    p_norm: 0.5\n"
        "  weights:\n    out_to_in: 0.5\n    in_to_orig: 0.25\n"
    )
    cfg = load_config(TrainConfig, path, ["--loss.sparsity.coeff", "9", "--loss.weights.out_to_in=2"])
    assert cfg.loss.sparsity == SparsityConfig(coeff=9.0, p_norm=0.5)
    assert cfg.loss.kind == "local"
    assert cfg.loss.weights == {"out_to_in": 2.0, "in_to_orig": 0.25}


def test_cli_string_fields_keep_their_text():
    # YAML would read these as 1.1 / octal 83 / True; str fields must get the text as typed.
    cfg = load_config(TrainConfig, None, ["--model=0123", "--revision", "1.10", "--loss.weights.yes=1"])
    assert cfg.model == "0123" and cfg.revision == "1.10"
    cfg = load_config(TrainConfig, None, ["--model", "yes"])
    assert cfg.model == "yes"


# ----------------------------------------------------------------------------------- coercion


def test_float_coercion_from_strings_and_ints():
    cfg = from_dict(TrainConfig, {"model": "m", "lr": "1e-3", "loss": {"sparsity": {"coeff": 2}}})
    assert cfg.lr == pytest.approx(1e-3) and isinstance(cfg.lr, float)
    assert cfg.loss.sparsity.coeff == 2.0 and isinstance(cfg.loss.sparsity.coeff, float)


def test_int_coercion():
    assert from_dict(TrainConfig, {"model": "m", "steps": "1e3"}).steps == 1000
    assert from_dict(TrainConfig, {"model": "m", "steps": "10_000"}).steps == 10000
    with pytest.raises(ConfigError, match=r"Invalid value for 'steps': expected int, got '2.5'"):
        from_dict(TrainConfig, {"model": "m", "steps": "2.5"})
    with pytest.raises(ConfigError, match=r"expected int, got True"):
        from_dict(TrainConfig, {"model": "m", "steps": True})


@pytest.mark.parametrize(
    "text, expected",
    [("true", True), ("False", False), ("yes", True), ("no", False), ("1", True), ("0", False), ("on", True)],
)
def test_bool_strings(text, expected):
    assert from_dict(TrainConfig, {"model": "m", "streaming": text}).streaming is expected
    assert load_config(TrainConfig, None, ["--model=m", f"--streaming={text}"]).streaming is expected


def test_bool_rejects_garbage():
    with pytest.raises(ConfigError, match=r"'streaming': expected bool, got 'maybe'"):
        load_config(TrainConfig, None, ["--model=m", "--streaming", "maybe"])


@pytest.mark.parametrize("null", [None, "null", "none", "None", "~"])
def test_optional_accepts_null_spellings(null):
    cfg = from_dict(TrainConfig, {"model": "m", "seed": null, "revision": null})
    assert cfg.seed is None and cfg.revision is None


def test_optional_value_and_error():
    assert load_config(TrainConfig, None, ["--model=m", "--seed", "7"]).seed == 7
    assert load_config(TrainConfig, None, ["--model=m", "--seed", "null"]).seed is None
    with pytest.raises(ConfigError, match=r"'seed': expected int, got 'abc'"):
        load_config(TrainConfig, None, ["--model=m", "--seed", "abc"])


def test_list_from_comma_string_yaml_list_and_scalar():
    assert from_dict(TrainConfig, {"model": "m", "sites": "a, b,c"}).sites == ["a", "b", "c"]
    assert from_dict(TrainConfig, {"model": "m", "sites": ["x", "y"]}).sites == ["x", "y"]
    assert load_config(TrainConfig, None, ["--model=m", "--sites", "[p, q]"]).sites == ["p", "q"]
    assert load_config(TrainConfig, None, ["--model=m", "--sites", "only"]).sites == ["only"]
    assert load_config(TrainConfig, None, ["--model=m", "--sites="]).sites == []


def test_tuple_elements_are_coerced():
    cfg = load_config(TrainConfig, None, ["--model=m", "--layers", "2,6"])
    assert cfg.layers == (2, 6)
    with pytest.raises(ConfigError, match=r"'layers\[1\]': expected int, got 'x'"):
        load_config(TrainConfig, None, ["--model=m", "--layers", "2,x"])


def test_path_union_and_any():
    cfg = load_config(TrainConfig, None, ["--model=m", "--out_dir", "runs/a", "--width=0.5", "--extra.n=4"])
    assert cfg.out_dir == Path("runs/a")
    assert cfg.width == 0.5 and isinstance(cfg.width, float)
    assert cfg.extra == {"n": 4}
    assert load_config(TrainConfig, None, ["--model=m", "--width=8"]).width == 8


def test_dict_values_are_coerced():
    cfg = from_dict(TrainConfig, {"model": "m", "loss": {"weights": {"a": "1e-2"}}})
    assert cfg.loss.weights == {"a": pytest.approx(0.01)}
    with pytest.raises(ConfigError, match=r"'loss.weights.a': expected float"):
        from_dict(TrainConfig, {"model": "m", "loss": {"weights": {"a": "big"}}})


def test_literal_error_lists_choices():
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, None, ["--model=m", "--loss.kind", "global"])
    message = str(info.value)
    assert "'loss.kind'" in message and "'global'" in message
    assert "'e2e', 'local', 'e2e+ds'" in message
    assert load_config(TrainConfig, None, ["--model=m", "--loss.kind", "e2e+ds"]).loss.kind == "e2e+ds"


def test_nested_dataclass_needs_mapping():
    with pytest.raises(ConfigError, match=r"'loss.sparsity': expected SparsityConfig, got 3"):
        from_dict(TrainConfig, {"model": "m", "loss": {"sparsity": 3}})


def test_optional_nested_dataclass():
    assert load_config(WithOptionalSub, None, []).sub is None
    assert load_config(WithOptionalSub, None, ["--sub.coeff", "2"]).sub == SparsityConfig(coeff=2.0)
    assert load_config(WithOptionalSub, None, ["--sub={p_norm: 2}"]).sub == SparsityConfig(p_norm=2.0)
    assert load_config(WithOptionalSub, None, ["--sub.coeff=2", "--sub=null"]).sub is None  # later wins
    with pytest.raises(ConfigError, match=r"Unknown config key 'sub.cof'; did you mean 'sub.coeff'\?"):
        load_config(WithOptionalSub, None, ["--sub.cof=2"])


def test_inputs_are_not_mutated():
    data = {"model": "m", "loss": {"sparsity": {"coeff": "2"}}}
    cfg = from_dict(TrainConfig, data)
    assert data == {"model": "m", "loss": {"sparsity": {"coeff": "2"}}}
    assert cfg.loss.sparsity.coeff == 2.0
    sub = SparsityConfig(coeff=4.0)
    assert from_dict(WithOptionalSub, {"sub": sub}).sub is sub  # instances pass through untouched


# ----------------------------------------------------------------------------------- errors


def test_unknown_key_suggests_nearest_nested_name():
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, None, ["--model=m", "--loss.sparsty.coeff", "3"])
    assert str(info.value) == "Unknown config key 'loss.sparsty.coeff'; did you mean 'loss.sparsity.coeff'?"


def test_unknown_leaf_key_suggests_and_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"'loss.sparsity.coef'; did you mean 'loss.sparsity.coeff'\?"):
        from_dict(TrainConfig, {"model": "m", "loss": {"sparsity": {"coef": 1}}})
    with pytest.raises(ConfigError, match=r"did you mean 'loss.sparsity.coeff'\?"):
        load_config(TrainConfig, None, ["--model=m", "--coeff=1"])  # found deeper in the tree
    with pytest.raises(ConfigError, match=r"Unknown config key 'zzzzzz'; valid keys: model, lr, steps"):
        from_dict(TrainConfig, {"model": "m", "zzzzzz": 1})


def test_missing_required_field():
    with pytest.raises(ConfigError, match=r"Missing required config field\(s\): model"):
        load_config(TrainConfig, None, [])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(TrainConfig, tmp_path / "nope.yaml", None)


def test_non_mapping_yaml(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping at top level, got list"):
        load_config(TrainConfig, path, None)


def test_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="Could not parse YAML"):
        load_config(TrainConfig, path, None)


def test_empty_yaml_plus_overrides(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(TrainConfig, path, ["--model", "m"]).model == "m"


def test_post_init_errors_carry_the_field_path():
    with pytest.raises(ConfigError, match=r"Invalid config 'loss.sparsity': coeff must be >= 0, got -1.0"):
        load_config(TrainConfig, None, ["--model=m", "--loss.sparsity.coeff=-1"])
    with pytest.raises(ConfigError, match=r"Invalid config TrainConfig: steps must be positive"):
        load_config(TrainConfig, None, ["--model=m", "--steps=0"])


# ----------------------------------------------------------------------------------- round trip


def test_round_trip_through_save_yaml(tmp_path):
    cfg = load_config(
        TrainConfig,
        None,
        ["--model=0123", "--lr=3e-5", "--sites=a,b", "--seed=5", "--layers=1,2", "--out_dir=x/y", "--width=0.25",
         "--extra={k: [1, 2]}", "--loss.kind=local", "--loss.weights={a: 1, b: 0.5}", "--revision=1.10"],
    )
    plain = to_dict(cfg)
    assert plain["out_dir"] == "x/y" and plain["layers"] == [1, 2] and plain["loss"]["sparsity"]["coeff"] == 1.5
    path = save_yaml(cfg, tmp_path / "sub" / "config.yaml")
    again = load_config(TrainConfig, path, None)
    assert again == cfg
    assert to_dict(again) == plain


def test_to_dict_does_not_mutate_and_rejects_unknown_objects():
    cfg = TrainConfig(model="m", extra={"obj": object()})
    with pytest.raises(TypeError, match="extra.obj"):
        to_dict(cfg)
    cfg = TrainConfig(model="m")
    to_dict(cfg)["loss"]["sparsity"]["coeff"] = 99
    assert cfg.loss.sparsity.coeff == 1.5


# ----------------------------------------------------------------------------------- help / docs


def test_field_docstrings_extracted():
    docs = field_docstrings(SparsityConfig)
    assert docs == {"coeff": "Sparsity coefficient (the paper's lambda).", "p_norm": "Exponent of the Lp sparsity penalty."}
    assert field_docstrings(_NoDocs) == {}


def test_field_docstrings_tolerate_missing_source():
    namespace: dict[str, Any] = {}
    exec("from dataclasses import dataclass\n@dataclass\nclass Dyn:\n    a: int = 1\n    '''doc'''\n", namespace)
    assert field_docstrings(namespace["Dyn"]) == {}
    assert "--a int  (default: 1)" in format_help(namespace["Dyn"], "prog")


def test_help_lists_dotted_fields_types_defaults_and_docs():
    text = format_help(TrainConfig, "hf-e2e-sae train")
    assert text.startswith("usage: hf-e2e-sae train")
    assert "Toy training config." in text
    assert "--loss.sparsity.coeff float  (default: 1.5)" in text
    assert "Sparsity coefficient (the paper's lambda)." in text
    assert "--model str  (required)" in text
    assert "--seed int | None  (default: null)" in text
    assert "--sites list[str]  (default: [\"blocks.0.resid_pre\"])" in text
    assert "--loss.kind Literal['e2e', 'local', 'e2e+ds']" in text
    assert "Loss settings." in text
    assert text.index("--loss.sparsity.coeff") < text.index("--loss.kind")


@pytest.mark.parametrize(
    "args, expected",
    [(["--help"], True), (["-h"], True), (["--lr", "1", "-h"], True), (["--streaming", "--help"], True),
     (["--lr", "1"], False), (["--model", "-h"], False), ([], False)],
)
def test_is_help_requested(args, expected):
    assert is_help_requested(args) is expected
