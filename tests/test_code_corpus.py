"""The offline code corpus: licences decide what is kept, duplicates are kept once, the split is by package and
stable, and the manifest records every package (hf_e2e_sae/pretraining/code_corpus.py)."""
import json

import pytest

from hf_e2e_sae.pretraining.code_corpus import Source, build_corpus, collect_sources, is_held_out, is_permissive


@pytest.mark.parametrize("text, expected", [
    ("MIT", True), ("BSD-3-Clause", True), ("Apache-2.0 OR BSD-3-Clause", True), ("PSF-2.0", True),
    ("Apache-2.0 OR MIT", True), ("MPL-2.0", False), ("MPL-2.0 AND MIT", False), ("GPL-3.0-or-later", False),
    ("LGPL-2.1 OR MIT", True), ("", False), ("Proprietary", False)])
def test_licences(text, expected):
    assert is_permissive(text) is expected


def test_build_keeps_permissive_packages_once_and_splits_by_package(tmp_path):
    files = {name: tmp_path / f"{name}.py" for name in ("a", "b", "dup", "big")}
    for name, path in files.items():
        path.write_text(f"def {name}():\n    return 1\n")
    files["dup"].write_text(files["a"].read_text())  # same bytes as a.py
    files["big"].write_text("x = 1\n" * 200_000)  # over the size limit: generated, dropped
    held = next(f"pkg{i}" for i in range(1000) if is_held_out(f"pkg{i}"))
    train = next(f"pkg{i}" for i in range(1000) if not is_held_out(f"pkg{i}"))
    sources = [Source(train, "1.0", "MIT", [str(files["a"]), str(files["big"])]),
               Source(held, "1.0", "BSD-3-Clause", [str(files["b"]), str(files["dup"])]),
               Source("zcopyleft", "1.0", "GPL-3.0", [str(files["b"])])]
    manifest = build_corpus(sources, tmp_path / "out", progress=False)
    rows = {split: [json.loads(line) for line in (tmp_path / "out" / f"{split}.jsonl").open()]
            for split in ("train", "heldout")}
    assert [r["package"] for r in rows["train"]] == [train]  # a.py; big.py dropped
    assert [r["text"] for r in rows["heldout"]] == [files["b"].read_text()]  # dup.py is a.py again
    by_name = {p["package"]: p for p in manifest["packages"]}
    assert by_name[held]["duplicates"] == 1 and by_name["zcopyleft"]["files"] == 0
    assert not by_name["zcopyleft"]["permissive"] and by_name[held]["split"] == "heldout"
    assert manifest["splits"]["train"]["files"] == 1 and len(manifest["splits"]["heldout"]["sha256"]) == 64
    again = build_corpus(sources, tmp_path / "again", progress=False)
    assert again["splits"] == manifest["splits"]  # deterministic, byte for byte


def test_collect_sources_sees_this_environment():
    sources = {s.package: s for s in collect_sources()}
    assert sources["stdlib:json"].permissive and any(f.endswith("json/decoder.py") for f in sources["stdlib:json"].files)
    assert sources["pyyaml"].permissive and sources["pyyaml"].files
    assert not sources["hypothesis"].permissive  # MPL-2.0: left out
