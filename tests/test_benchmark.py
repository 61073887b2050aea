"""`hf-e2e-sae bench`'s measuring parts (not timings): the CPU memory probe and the ratios."""
import subprocess
import sys
import textwrap

from hf_e2e_sae.bench.benchmark import ratios

PROBE = textwrap.dedent("""
    import os, torch
    from hf_e2e_sae.bench.benchmark import cpu_peak_in_this_process
    kept = []
    def step():
        transient = torch.ones(64 * 2**20 // 4)           # 64 MiB, freed at the end of every step
        if not kept:
            kept.append(torch.ones(16 * 2**20 // 4))      # 16 MiB made by the first step and kept
        return float(transient[0])
    print(*cpu_peak_in_this_process(step))
""")


def test_cpu_probe_separates_the_state_a_first_step_keeps_from_the_peak_of_the_next():
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    state, peak = (int(v) / 2**20 for v in out.stdout.split())
    assert 15 <= state <= 40, state  # the kept 16 MiB (+ a little that torch loads on first use), not the 64 MiB
    assert 63 <= peak <= 70, peak  # the next step's own 64 MiB, not the kept 16 MiB


def test_ratios_are_ours_over_theirs_and_skip_missing_systems():
    results = {"ours_e2e": {"step_s": 1.0, "peak_bytes": 300}, "sparsify_kl": {"step_s": 2.0, "peak_bytes": None},
               "plain_forward": {"step_s": 0.5, "peak_bytes": 200}}
    out = ratios(results)
    assert out == {"e2e_time / sparsify_kl": 0.5, "e2e_peak / plain_forward_peak": 1.5}


def test_the_sweep_systems_run(tmp_path):
    """The bench's sweep systems build and step on the tiny shape (variants share one base model explicitly)."""
    import json
    import os

    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "hf_e2e_sae.cli", "bench", "--shape", "tiny", "--systems",
                           "ours_e2e,ours_sweep_e2e_4,ours_sweep_local_4", "--repeats", "1", "--warmup", "0",
                           "--no-memory", "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = json.dumps(json.loads(out.read_text()))
    assert "ours_sweep_e2e_4" in text and "ours_sweep_local_4" in text
