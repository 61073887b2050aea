"""Property tests: the config parser and every SAE loader, over generated malformed inputs.

For YAML text + command-line overrides, and for a folder in each format we read (ours, SAELens, sparsify, e2e_sae,
dictionary_learning) with random tensor names, shapes and dtypes, random config values, missing keys, damaged
headers and random bytes, the outcome is either a correct result or a one-line error of a known type (`ValueError`
including `ConfigError`, `NotImplementedError`, `OSError`, whose message has no newline); never another exception,
and never more than a few MB allocated (inputs are tiny, so a larger allocation was sized by an unchecked value).
"""
from __future__ import annotations

import json
import resource
import tracemalloc
from pathlib import Path

import pytest
import torch  # a README-installed dependency: missing fails, never skips
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from hf_e2e_sae import SAEConfig, SparseAutoencoder
from hf_e2e_sae.config.arguments import ConfigError
from hf_e2e_sae.interop import load_sae
from hf_e2e_sae.training.config import TrainConfig, load_train_config

KNOWN_ERRORS = (ValueError, NotImplementedError, OSError)
MAX_PYTHON_BYTES = 32 * 2**20
MAX_RSS_GROWTH_KB = 512 * 1024
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _check_outcome(call):
    """Run `call()`: a result, or a one-line known error (returned as None); anything else fails the test."""
    tracemalloc.start()
    try:
        result = call()
    except KNOWN_ERRORS as error:
        message = str(error)
        assert "\n" not in message, f"{type(error).__name__} spans lines: {message!r}"
        assert message.strip(), f"{type(error).__name__} without a message"
        result = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < MAX_PYTHON_BYTES, f"{peak / 2**20:.0f} MB allocated for a tiny input"
    return result


@pytest.fixture(autouse=True)
def _bounded_rss():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < MAX_RSS_GROWTH_KB, f"peak memory grew by {grown / 1024:.0f} MB on tiny inputs"


# ---------------------------------------------------------------- strategies
dims = st.integers(min_value=0, max_value=12)
shapes = st.lists(dims, min_size=0, max_size=3).map(tuple)
dtypes = st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool])
claimed_sizes = st.one_of(st.integers(min_value=-3, max_value=40), st.sampled_from([2_000_000, 10**12, 2**63]),
                          st.text(max_size=3), st.none(), st.floats(allow_nan=True), st.booleans())
json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-5, 50), st.text(max_size=6)),
                           lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5),
                                                                                             children, max_size=3),
                           max_leaves=6)


def _tensor(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype) if dtype == torch.bool else torch.randn(shape).to(dtype)


@st.composite
def tensor_dicts(draw, names: list) -> dict:
    """Mostly the format's names, some missing, some extra; random shapes and dtypes, sometimes consistent ones."""
    d_in, d_sae = draw(st.integers(1, 8)), draw(st.integers(1, 12))
    good = {"din": (d_in,), "dsae": (d_sae,), "enc": (d_sae, d_in), "encT": (d_in, d_sae)}
    out = {}
    for name, kind in names:
        if draw(st.integers(0, 9)) == 0:
            continue  # missing
        shape = good[kind] if draw(st.booleans()) else draw(shapes)
        out[name] = _tensor(shape, draw(dtypes) if draw(st.integers(0, 4)) == 0 else torch.float32)
    if draw(st.integers(0, 5)) == 0:
        out[draw(st.text("abc.", min_size=1, max_size=5))] = _tensor(draw(shapes), torch.float32)
    return out


damages = st.sampled_from(["none", "none", "none", "truncate", "header", "random"])


def _damage(path: Path, how: str, data: st.DataObject) -> None:
    raw = path.read_bytes()
    if how == "truncate":
        path.write_bytes(raw[:data.draw(st.integers(0, max(0, len(raw) - 1)))])
    elif how == "header":
        at = data.draw(st.integers(0, min(len(raw), 64)))
        path.write_bytes(raw[:at] + data.draw(st.binary(min_size=1, max_size=8)) + raw[at + 8:])
    elif how == "random":
        path.write_bytes(data.draw(st.binary(max_size=64)))


def _assert_consistent(sae) -> None:
    """A load that succeeded gives an SAE whose tensors have the shapes its config says, and that runs."""
    if sae is None:
        return
    c = sae.config
    assert sae.encoder.weight.shape == (c.dict_size, c.d_in) and sae.encoder.bias.shape == (c.dict_size,)
    assert sae.decoder.weight.shape == (c.d_in, c.dict_size) and sae.decoder.bias.shape == (c.d_in,)
    out = sae(torch.zeros(2, c.d_in))
    assert out.reconstruction.shape == (2, c.d_in)


def _fresh(tmp_path: Path, counter=[0]) -> Path:  # noqa: B006  (a per-process counter)
    counter[0] += 1
    folder = tmp_path / f"ex{counter[0]}"
    folder.mkdir()
    return folder


# ---------------------------------------------------------------- the config parser
yaml_docs = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True), st.text(max_size=8)),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["data", "path", "lr", "sites", "loss", "preset", "dict_size", "load_kwargs", "n_samples",
                         "x"]), children, max_size=4), max_leaves=12)
raw_yaml = st.one_of(st.text(alphabet="{}[]:&*!-,|>'\"\n #ab01", max_size=60),
                     st.builds(lambda a: "x: &a [1, 2]\ny: [" + ", ".join(["*a"] * a) + "]\n", st.integers(0, 400)),
                     st.builds(lambda n: "data:\n  load_kwargs:\n    d: " + "[" * n + "]" * n + "\n",
                               st.integers(0, 3000)))
override_tokens = st.lists(st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["lr", "data.load_kwargs", "sites", "dict_size", "loss.preset",
                                                        "data.path", "a..b", ""]),
              st.text(alphabet="{}[]:&*!,ab01.e-", max_size=12)),
    st.sampled_from(["--lr", "--data.load_kwargs", "-x", "--", "stray"])), max_size=3)


@SETTINGS
@given(doc=st.one_of(yaml_docs.map(lambda d: yaml.safe_dump(d)), raw_yaml), overrides=override_tokens)
def test_config_parser_gives_a_config_or_one_line(tmp_path, doc, overrides):
    path = tmp_path / "config.yaml"
    path.write_text(doc)
    result = _check_outcome(lambda: load_train_config(path, overrides))
    assert result is None or isinstance(result, TrainConfig)


# ---------------------------------------------------------------- each loader


@SETTINGS
@given(data=st.data())
def test_our_format_loads_or_fails_in_one_line(tmp_path, data):
    folder = _fresh(tmp_path)
    d_in, dict_size = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 10))
    SparseAutoencoder(SAEConfig(d_in=d_in, dict_size=dict_size)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    for key in data.draw(st.lists(st.sampled_from(["d_in", "dict_size", "activation", "k", "format_version",
                                                   "input_scale", "site"]), max_size=2)):
        config[key] = data.draw(claimed_sizes)
    (folder / "config.json").write_text(json.dumps(config))
    if data.draw(st.booleans()):
        save_file(data.draw(tensor_dicts([("encoder.weight", "enc"), ("encoder.bias", "dsae"),
                                          ("decoder.weight", "encT"), ("decoder.bias", "din")])),
                  str(folder / "model.safetensors"))
    _damage(folder / "model.safetensors", data.draw(damages), data)
    _assert_consistent(_check_outcome(lambda: load_sae(folder, format="hf_e2e_sae")))


def _foreign_config(data, keys: dict) -> dict:
    cfg = {}
    for key, valid in keys.items():
        choice = data.draw(st.integers(0, 5))
        if choice == 0:
            continue
        cfg[key] = data.draw(json_values) if choice == 1 else data.draw(valid)
    return cfg


@SETTINGS
@given(data=st.data())
def test_saelens_loads_or_fails_in_one_line(tmp_path, data):
    folder = _fresh(tmp_path)
    weights = data.draw(tensor_dicts([("W_enc", "encT"), ("b_enc", "dsae"), ("W_dec", "enc"), ("b_dec", "din"),
                                      ("threshold", "dsae")]))
    save_file(weights, str(folder / "sae_weights.safetensors"))
    _damage(folder / "sae_weights.safetensors", data.draw(damages), data)
    cfg = _foreign_config(data, {
        "architecture": st.sampled_from(["standard", "topk", "jumprelu", "gated"]), "k": claimed_sizes,
        "d_in": claimed_sizes, "d_sae": claimed_sizes, "apply_b_dec_to_input": st.booleans(),
        "normalize_activations": st.sampled_from(["none", "layer_norm"]),
        "metadata": st.fixed_dictionaries({"hook_name": st.sampled_from(["blocks.1.hook_resid_pre", "x"])})})
    (folder / "cfg.json").write_text(json.dumps(cfg) if data.draw(st.integers(0, 6)) else "{not json")
    _assert_consistent(_check_outcome(lambda: load_sae(folder)))


@SETTINGS
@given(data=st.data())
def test_sparsify_loads_or_fails_in_one_line(tmp_path, data):
    folder = _fresh(tmp_path) / "layers.1"
    folder.mkdir()
    weights = data.draw(tensor_dicts([("encoder.weight", "enc"), ("encoder.bias", "dsae"), ("W_dec", "enc"),
                                      ("b_dec", "din")]))
    save_file(weights, str(folder / "sae.safetensors"))
    _damage(folder / "sae.safetensors", data.draw(damages), data)
    cfg = _foreign_config(data, {"k": claimed_sizes, "num_latents": claimed_sizes, "d_in": claimed_sizes,
                                 "activation": st.sampled_from(["topk", "groupmax"]), "transcode": st.booleans()})
    (folder / "cfg.json").write_text(json.dumps(cfg) if data.draw(st.integers(0, 6)) else "[1, 2")
    _assert_consistent(_check_outcome(lambda: load_sae(folder)))


def _save_pickle(path: Path, state: dict, data) -> None:
    torch.save(state, path)
    _damage(path, data.draw(damages), data)


@SETTINGS
@given(data=st.data())
def test_e2e_sae_loads_or_fails_in_one_line(tmp_path, data):
    folder = _fresh(tmp_path)
    prefix = data.draw(st.sampled_from(["blocks-1-hook_resid_pre", "blocks-2-hook_resid_post", "x"]))
    weights = data.draw(tensor_dicts([("encoder.0.weight", "enc"), ("encoder.0.bias", "dsae"),
                                      ("decoder.weight", "encT"), ("decoder.bias", "din")]))
    state = {f"{prefix}.{k}": v for k, v in weights.items()}
    if data.draw(st.integers(0, 5)) == 0:
        state = {"not": data.draw(json_values)}
    _save_pickle(folder / "samples_10.pt", state, data)
    options = {"site": data.draw(st.sampled_from(["blocks.1.resid_pre", "blocks.5.resid_pre", "junk"]))} \
        if data.draw(st.booleans()) else {}
    if data.draw(st.booleans()):
        (folder / "final_config.yaml").write_text(data.draw(raw_yaml))
    _assert_consistent(_check_outcome(lambda: load_sae(folder, **options)))


@SETTINGS
@given(data=st.data())
def test_dictionary_learning_loads_or_fails_in_one_line(tmp_path, data):
    folder = _fresh(tmp_path)
    variant = data.draw(st.sampled_from([
        [("encoder.weight", "enc"), ("encoder.bias", "dsae"), ("decoder.weight", "encT"), ("bias", "din")],
        [("encoder.weight", "enc"), ("encoder.bias", "dsae"), ("decoder.weight", "encT"), ("b_dec", "din"),
         ("k", "din")],
        [("W_enc", "encT"), ("b_enc", "dsae"), ("W_dec", "enc"), ("b_dec", "din"), ("threshold", "dsae")]]))
    _save_pickle(folder / "ae.pt", data.draw(tensor_dicts(variant)), data)
    if data.draw(st.booleans()):
        trainer = _foreign_config(data, {"k": claimed_sizes, "layer": claimed_sizes, "lm_name": json_values,
                                         "submodule_name": st.sampled_from(["resid_post_layer_1", "junk"])})
        (folder / "config.json").write_text(json.dumps({"trainer": trainer} if data.draw(st.integers(0, 4))
                                                       else data.draw(json_values)))
    _assert_consistent(_check_outcome(lambda: load_sae(folder)))
