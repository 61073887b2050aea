"""Configs from YAML + command-line overrides on pydantic (hf_e2e_sae.config.arguments): syntax, coercion,
one-line errors with suggestions, round trips and --help."""
from typing import Literal, Optional, Union

import pytest
from pydantic import Field, ValidationError, model_validator

from hf_e2e_sae.config.arguments import (
    ConfigError, ConfigModel, format_help, is_help_requested, load_config, parse_overrides, save_yaml)
from hf_e2e_sae.training.config import TrainConfig


class Sparsity(ConfigModel):
    coeff: Optional[float] = None
    """Sparsity coefficient."""
    p: float = 1.0
    """The p of the norm."""


class Loss(ConfigModel):
    preset: Literal["local", "e2e", "e2e+ds"] = "e2e"
    """The preset."""
    sparsity: Sparsity = Field(default_factory=Sparsity)
    """Sparsity term."""


class Run(ConfigModel):
    name: str = "run"
    """Run name."""
    lr: float = 5e-4
    """Learning rate."""
    steps: int = 10
    """Optimizer steps."""
    verbose: bool = False
    """Talk more."""
    limit: Optional[int] = None
    """Optional limit."""
    sites: list[str] = Field(default_factory=lambda: ["blocks.6.resid_pre"])
    """SAE sites."""
    files: Optional[Union[str, list[str]]] = None
    """A path or paths."""
    extra: dict[str, int] = Field(default_factory=dict)
    """Extra numbers."""
    loss: Loss = Field(default_factory=Loss)
    """Loss settings."""

    @model_validator(mode="after")
    def _check(self) -> "Run":
        if self.steps > 1000:
            raise ValueError(f"steps={self.steps} is too many")
        return self


def test_all_override_syntaxes_mix():
    run = load_config(Run, None, ["--lr", "1e-3", "--steps=3", "loss.preset=local", "--loss.sparsity.coeff", "2"])
    assert (run.lr, run.steps, run.loss.preset, run.loss.sparsity.coeff) == (1e-3, 3, "local", 2.0)


def test_later_override_wins_and_siblings_merge():
    assert parse_overrides(["--a.b", "1", "--a.c", "2", "--a.b", "3"]) == {"a": {"b": 3, "c": 2}}


def test_bare_bool_flag_and_bool_spellings():
    assert load_config(Run, None, ["--verbose"]).verbose is True
    assert load_config(Run, None, ["--verbose", "--steps", "2"]).verbose is True
    for text, expected in [("true", True), ("yes", True), ("0", False), ("off", False)]:
        assert load_config(Run, None, [f"verbose={text}"]).verbose is expected
    with pytest.raises(ConfigError, match=r"Invalid value for 'verbose'.*got 'maybe'"):
        load_config(Run, None, ["verbose=maybe"])


def test_bare_flag_for_non_bool_field_is_an_error():
    with pytest.raises(ConfigError, match=r"^'--steps' was given without a value; expected int$"):
        load_config(Run, None, ["--steps"])


@pytest.mark.parametrize("bad, message", [(["steps"], "Unexpected argument 'steps'"),
                                          (["--a..b", "1"], "Invalid override key 'a..b'"),
                                          (["-x"], "Unexpected argument '-x'")])
def test_malformed_override_tokens(bad, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Run, None, bad)


def test_overrides_deep_merge_into_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: base\nloss:\n  preset: local\n  sparsity: {coeff: 4, p: 0.5}\n")
    run = load_config(Run, path, ["--loss.sparsity.coeff", "3"])
    assert (run.name, run.loss.preset, run.loss.sparsity.coeff, run.loss.sparsity.p) == ("base", "local", 3.0, 0.5)


def test_cli_string_fields_keep_their_text_and_numbers_coerce():
    run = load_config(Run, None, ["name=1.10", "lr=3", "steps=7.0", "limit=null"])
    assert run.name == "1.10" and run.lr == 3.0 and isinstance(run.lr, float) and run.steps == 7 and run.limit is None
    with pytest.raises(ConfigError, match=r"Invalid value for 'steps'.*got 7.5"):
        load_config(Run, None, ["steps=7.5"])
    with pytest.raises(ConfigError, match=r"Invalid value for 'lr'.*got 'fast'"):
        load_config(Run, None, ["lr=fast"])


def test_lists_dicts_and_unions():
    assert load_config(Run, None, ["sites=blocks.1.resid_pre, blocks.2.mlp_out"]).sites == [
        "blocks.1.resid_pre", "blocks.2.mlp_out"]
    assert load_config(Run, None, ["sites=[a, b]"]).sites == ["a", "b"]
    assert load_config(Run, None, ["files=one.txt"]).files == "one.txt"
    assert load_config(Run, None, ["files=[a.txt, b.txt]"]).files == ["a.txt", "b.txt"]
    assert load_config(Run, None, ["extra={a: 1, b: 2}"]).extra == {"a": 1, "b": 2}
    with pytest.raises(ConfigError, match=r"'extra\.a'"):
        load_config(Run, None, ["extra={a: x}"])


def test_literal_error_lists_choices():
    with pytest.raises(ConfigError, match=r"^Invalid value for 'loss\.preset': 'e2e_ds'; expected one of: "
                                          r"'local', 'e2e', 'e2e\+ds'$"):
        load_config(Run, None, ["loss.preset=e2e_ds"])


def test_unknown_keys_suggest_the_nearest_name_or_list_the_valid_ones():
    with pytest.raises(ConfigError, match=r"^Unknown config key 'loss\.sparsty\.coeff'; did you mean "
                                          r"'loss\.sparsity\.coeff'\?$"):
        load_config(Run, None, ["--loss.sparsty.coeff", "3"])
    with pytest.raises(ConfigError, match=r"'loss\.sparsity\.cof'; did you mean 'loss\.sparsity\.coeff'\?"):
        load_config(Run, None, ["loss.sparsity.cof=3"])
    with pytest.raises(ConfigError, match=r"'zzz'; valid keys: name, lr, steps"):
        load_config(Run, None, ["zzz=1"])
    with pytest.raises(ConfigError, match=r"'loss\.zzz'; valid keys under 'loss': preset, sparsity$"):
        load_config(Run, None, ["loss.zzz=1"])


def test_file_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="Config file not found"):
        load_config(Run, tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping at top level, got list"):
        load_config(Run, tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="Could not parse YAML config") as info:
        load_config(Run, tmp_path / "bad.yaml")
    assert "\n" not in str(info.value)
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(Run, tmp_path / "empty.yaml", ["steps=2"]).steps == 2


def test_validator_errors_carry_the_message_and_configs_are_frozen():
    with pytest.raises(ConfigError, match=r"^steps=5000 is too many$"):
        load_config(Run, None, ["steps=5000"])
    run = load_config(Run, None, [])
    with pytest.raises(ValidationError, match="frozen"):
        run.steps = 3


def test_round_trip_through_save_yaml(tmp_path):
    run = load_config(Run, None, ["name=x", "sites=a,b", "extra={k: 3}", "loss.sparsity.coeff=0.25"])
    assert load_config(Run, save_yaml(run, tmp_path / "out" / "run.yaml")) == run
    redacted = save_yaml(run, tmp_path / "r.yaml", redact=lambda d: {**d, "name": "***"})
    assert "name: '***'" in redacted.read_text()


def test_help_lists_dotted_fields_types_real_defaults_and_docs():
    text = format_help(Run, "prog", preamble="Without CONFIG: the demo.")
    assert text.startswith("usage: prog [-h]") and "Without CONFIG: the demo." in text
    assert "--loss.sparsity.coeff float | None  (default: null)" in text and "Sparsity coefficient." in text
    assert "--loss.preset {local,e2e,e2e+ds}  (default: \"e2e\")" in text
    # TrainConfig: the data defaults shown are the ones a run gets (OpenWebText, streamed), not DataConfig's own
    train_help = format_help(TrainConfig, "hf-e2e-sae train")
    assert '--data.path str  (default: "apollo-research/Skylion007-openwebtext-tokenizer-gpt2")' in train_help
    assert "--data.streaming bool  (default: true)" in train_help


@pytest.mark.parametrize("args, expected", [(["-h"], True), (["--lr", "1", "--help"], True),
                                            (["--name", "-h"], False), (["a=1"], False)])
def test_is_help_requested(args, expected):
    assert is_help_requested(args) is expected
