"""Every user mistake through the real command line (subprocesses): exit code 2, one stderr line naming the
field or file, no traceback. All commands start at once (they are independent) to keep the suite quick."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, "-m", "hf_e2e_sae.cli", "train"]


def _data_files(root: Path) -> dict:
    (root / "empty.txt").write_bytes(b"")
    (root / "latin1.txt").write_bytes("To be, or not to be: caf\xe9".encode("latin-1") * 50)
    (root / "no_text.jsonl").write_text(json.dumps({"body": "hello"}) + "\n")
    (root / "saved").mkdir()
    (root / "used" / "final").mkdir(parents=True)  # a finished run's folder
    (root / "used" / "final" / "config.json").write_text("{}")
    return {name: str(root / name) for name in ("empty.txt", "latin1.txt", "no_text.jsonl", "saved", "used")}


def _cases(files: dict) -> dict:
    """name -> (argv, text the single stderr line must contain)."""
    return {
        "unknown key": (TRAIN + ["--loss.sparsty.coeff", "3"], "did you mean 'loss.sparsity.coeff'?"),
        "bad choice": (TRAIN + ["loss.preset=e2e_ds"], "'loss.preset': 'e2e_ds'; expected one of: 'local'"),
        "bad value": (TRAIN + ["lr=fast"], "Invalid value for 'lr'"),
        "missing config file": (TRAIN + ["nope.yaml"], "Config file not found: nope.yaml"),
        "block out of range": (TRAIN + ["sites=blocks.9.resid_pre"], "block index 9 out of range"),
        "unknown site kind": (TRAIN + ["sites=blocks.1.resid_mid"], "Unknown site 'blocks.1.resid_mid'"),
        "downstream before the SAE": (TRAIN + ["loss.preset=e2e+ds", "loss.downstream.sites=blocks.1.resid_pre"],
                                      "'blocks.1.resid_pre' is not after the last SAE site"),
        "batch sizes": (TRAIN + ["batch_size=3"], "batch_size=3 must divide effective_batch_size=16"),
        "missing data file": (TRAIN + ["data.path=./no_such_dir/plays.txt"], "./no_such_dir/plays.txt does not exist"),
        "empty data file": (TRAIN + [f"data.path={files['empty.txt']}"], f"{files['empty.txt']} is empty"),
        "not UTF-8": (TRAIN + [f"data.path={files['latin1.txt']}"], f"{files['latin1.txt']} is not UTF-8 text"),
        "no text column": (TRAIN + [f"data.path={files['no_text.jsonl']}"], "has no 'text' column (data.text_column)"),
        "examples/train.py": ([sys.executable, str(REPO / "examples" / "train.py"), "sites=blocks.9.resid_pre"],
                              "examples/train.py: error: sites: Site 'blocks.9.resid_pre': block index 9"),
        "push without token": ([sys.executable, "-m", "hf_e2e_sae.cli", "push", files["saved"], "me/x"],
                               "hf-e2e-sae push: error: no Hugging Face token: pass --token"),
        "push missing folder": ([sys.executable, "-m", "hf_e2e_sae.cli", "push", "./nope", "me/x", "--token", "t"],
                                "nope is not a directory"),
        "unknown command": ([sys.executable, "-m", "hf_e2e_sae.cli", "trian"], "unknown command 'trian'"),
        "init_from missing": (TRAIN + ["init_from=./no_such_sae"], "init_from: ./no_such_sae does not exist"),
        # The launching form (accelerate options first): checked here before any process starts.
        "launch: bad site": (TRAIN + ["--config_file", str(REPO / "examples/accelerate/cpu_2proc.yaml"),
                                      "sites=blocks.9.resid_pre"], "block index 9 out of range"),
        "launch: reused output_dir": (TRAIN + ["--config_file", str(REPO / "examples/accelerate/single.yaml"),
                                               f"output_dir={files['used']}"], "holds another run"),
        "launch: missing data": (TRAIN + ["--num_processes", "1", "data.path=./nope/plays.txt"],
                                 "./nope/plays.txt does not exist"),
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_errors")
    files = _data_files(root)
    (root / "saved" / "config.json").write_text("{}")  # a folder that looks saved: the token check comes next
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_HOME=str(root / "hf_home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    procs = {name: (subprocess.Popen(argv, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True), expected) for name, (argv, expected) in _cases(files).items()}
    return {name: (proc.wait(timeout=600), proc.stderr.read(), expected) for name, (proc, expected) in procs.items()}


@pytest.mark.parametrize("case", list(_cases({k: k for k in ("empty.txt", "latin1.txt", "no_text.jsonl", "saved",
                                                               "used")})))
def test_user_mistake_is_one_line_and_exit_2(results, case):
    code, stderr, expected = results[case]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    assert expected in lines[0], lines[0]
