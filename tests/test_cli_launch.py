"""The documented multi-process path (`hf-e2e-sae train [accelerate launch options] CONFIG`): a mistake found inside
a launched child is still one line and the child's exit status, not the launcher's traceback; `import
hf_e2e_sae`, the command list and config mistakes answer without loading torch; the README's local-data recipe
works with the demo config."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "LOCAL_RANK")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def test_split_launch_args_takes_only_leading_accelerate_options():
    from hf_e2e_sae.launcher import split_launch_args
    from hf_e2e_sae.training.config import TrainConfig

    fields = set(TrainConfig.model_fields)
    launch, rest = split_launch_args(["--config_file", "a.yaml", "--num_processes=2", "--multi_gpu", "cfg.yaml",
                                      "--num_processes", "3"], fields)
    assert launch == ["--config_file", "a.yaml", "--num_processes=2", "--multi_gpu"]
    assert rest == ["cfg.yaml", "--num_processes", "3"]
    # a TrainConfig field that accelerate also knows stays the config's
    assert split_launch_args(["--mixed_precision", "bf16"], fields) == ([], ["--mixed_precision", "bf16"])


def test_a_childs_mistake_is_one_line_with_its_exit_status(tmp_path):
    """Bypassing the checks before launch, the child itself finds the mistake: one line, exit 2, no traceback."""
    code = ("import sys; from hf_e2e_sae.launcher import launch; sys.exit(launch(['--config_file', "
            f"{str(REPO / 'examples/accelerate/single.yaml')!r}], ['sites=blocks.9.resid_pre'], 'hf-e2e-sae train'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=600)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "CalledProcessError" not in proc.stderr
    assert lines == ["hf-e2e-sae train: error: sites: Site 'blocks.9.resid_pre': block index 9 out of range; "
                     "the model has 4 blocks (0..3)."], proc.stderr


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["train", "lr=abc"], ["train", "--loss.sparsty.coeff", "3"],
                                  ["push", "--help"]])
def test_cli_answers_before_torch_loads(tmp_path, argv):
    code = ("import sys; from hf_e2e_sae.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules, file=sys.stderr)" % argv)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert proc.stderr.strip().splitlines()[-1] == "False False", proc.stderr


def test_import_is_cheap_and_auto_classes_still_know_saes(tmp_path):
    code = ("import sys, hf_e2e_sae; assert 'torch' not in sys.modules\n"
            "from transformers import AutoConfig\n"
            "print(type(AutoConfig.for_model('hf_e2e_sae')).__name__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "SAEConfig", proc.stderr


def test_default_activation_fixes_no_sparsity():
    """`TrainConfig` skips the activation registry when the config names no activation: that is only right while
    the default activation has no structural sparsity."""
    from hf_e2e_sae.sae.activations import ACTIVATION_SPECS
    from hf_e2e_sae.training.config import TrainConfig

    assert not ACTIVATION_SPECS[TrainConfig.model_fields["activation"].default].structural_sparsity


def test_readme_local_data_recipe_works_with_the_demo_config(tmp_path):
    """`data.path=./my_corpus` on top of the demo config: the built-in corpus's own eval split does not follow the
    user's data; the first chunks of their text are held out instead."""
    from hf_e2e_sae.cli import DEMO_CONFIG
    from hf_e2e_sae.data.config import eval_split_of
    from hf_e2e_sae.data.pipeline import build_datasets
    from hf_e2e_sae.training.config import load_train_config

    corpus = tmp_path / "my_corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("To be, or not to be, that is the question.\n" * 400)  # a document a line
    demo = load_train_config(DEMO_CONFIG, [])
    assert eval_split_of(demo.data) == "test"  # the demo still evaluates on the held-out plays
    config = load_train_config(DEMO_CONFIG, [f"data.path={corpus}", "data.n_eval_samples=2"])
    assert eval_split_of(config.data) is None
    from transformers import AutoTokenizer

    from hf_e2e_sae.patching.base_models import resolve_base_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(config.base_model.name_or_path))
    train, eval_ds = build_datasets(config.data, tokenizer, n_train_samples=4)
    assert len(eval_ds) == 2 and len(train) == 4


def test_one_rule_for_run_folders(tmp_path, monkeypatch):
    """A trainer output folder stands for its final/ save in every loader; a local-looking path that does not
    exist is answered at once (no Hub lookup)."""
    import time

    from hf_e2e_sae.runs.layout import looks_local, resolve_saved_path

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    assert resolve_saved_path(run) == str(run / "final")
    (run / "final" / "hf_e2e_sae.json").write_text("{}")
    assert resolve_saved_path(run / "final") == str(run / "final")  # a save is itself
    assert resolve_saved_path("org/name") == "org/name"  # a Hub id passes through
    monkeypatch.chdir(tmp_path)
    assert looks_local("run/nope") and looks_local("./x") and looks_local("a/b/c") and not looks_local("org/x")
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="run/nope does not exist"):
        resolve_saved_path("run/nope")
    from hf_e2e_sae import load_sae

    with pytest.raises(FileNotFoundError, match="run/nope does not exist"):
        load_sae("run/nope")
    assert time.perf_counter() - start < 5


def test_help_defaults_equal_a_validated_default_config():
    """`--help` shows `TrainConfig.model_construct()`'s values (no checks, no torch): they are the validated ones."""
    from hf_e2e_sae.config.arguments import to_dict
    from hf_e2e_sae.training.config import TrainConfig

    assert to_dict(TrainConfig.model_construct()) == to_dict(TrainConfig())
