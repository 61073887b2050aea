"""The fake Hub (tests/hub_server.py) driven by the real huggingface_hub client and transformers."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


def _write_folder(root, files: dict[str, bytes]):
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


FILES = {
    "config.json": b'{"a": 1}\n',
    "weights/sae.safetensors": bytes(range(256)) * 8,
    "README.md": b"---\nlicense: mit\n---\n# hello\n",
}


def test_client_points_at_fake_hub(hub):
    from huggingface_hub import constants

    assert constants.ENDPOINT == hub.url
    assert HfApi().endpoint == hub.url
    assert not constants.HF_HUB_OFFLINE


def test_create_repo_whoami_and_conflict(hub, hf_cache, hf_token):
    api = HfApi()
    assert api.whoami()["name"] == "user"
    repo_id = hub.unique_repo_id("create")
    url = api.create_repo(repo_id)
    assert url.repo_id == repo_id and url.startswith(hub.url)
    with pytest.raises(HfHubHTTPError) as info:
        api.create_repo(repo_id)
    assert info.value.response.status_code == 409
    assert api.create_repo(repo_id, exist_ok=True).repo_id == repo_id
    assert api.repo_exists(repo_id) and not api.repo_exists(repo_id + "-nope")
    assert hub.repo_files(repo_id) == {".gitattributes": hub.repo_files(repo_id)[".gitattributes"]}
    assert all(token == hf_token for token in hub.tokens_seen()[-5:])


def test_upload_folder_is_one_commit_and_downloads(hub, hf_cache, hf_token, tmp_path):
    api = HfApi()
    repo_id = hub.unique_repo_id("upload")
    api.create_repo(repo_id)
    n_commits = len(hub.commits(repo_id))
    info = api.upload_folder(repo_id=repo_id, folder_path=_write_folder(tmp_path / "src", FILES),
                             commit_message="add files")
    commits = hub.commits(repo_id)
    assert len(commits) == n_commits + 1
    assert info.oid == commits[-1].oid == hub.head(repo_id) and len(info.oid) == 40
    assert commits[-1].message == "add files"
    assert hub.validated_yaml and "license: mit" in hub.validated_yaml[-1]  # README.md went through validate-yaml

    stored = hub.repo_files(repo_id)
    assert {k: stored[k] for k in FILES} == FILES
    assert sorted(api.list_repo_files(repo_id)) == sorted([".gitattributes", *FILES])
    assert [e.path for e in api.list_repo_tree(repo_id)] == ["weights", ".gitattributes", "README.md", "config.json"]
    assert api.file_exists(repo_id, "weights/sae.safetensors") and not api.file_exists(repo_id, "nope.bin")
    model_info = api.model_info(repo_id)
    assert model_info.sha == info.oid
    assert sorted(s.rfilename for s in model_info.siblings) == sorted([".gitattributes", *FILES])

    for rel, data in FILES.items():
        path = hf_hub_download(repo_id, rel)
        assert _read(path) == data
        assert str(hf_cache) in path and f"snapshots/{info.oid}" in path
    snap = snapshot_download(repo_id)
    assert _read(f"{snap}/weights/sae.safetensors") == FILES["weights/sae.safetensors"]


def test_revision_pinning_and_deletes(hub, hf_cache, hf_token):
    api = HfApi()
    repo_id = hub.unique_repo_id("pin")
    api.create_repo(repo_id)
    old = api.upload_file(path_or_fileobj=b"v1", path_in_repo="f.txt", repo_id=repo_id).oid
    api.upload_file(path_or_fileobj=b"gone", path_in_repo="g.txt", repo_id=repo_id)
    new = api.upload_file(path_or_fileobj=b"v2", path_in_repo="f.txt", repo_id=repo_id).oid
    assert old != new
    assert _read(hf_hub_download(repo_id, "f.txt", revision=old)) == b"v1"
    assert _read(hf_hub_download(repo_id, "f.txt")) == b"v2"
    assert _read(hf_hub_download(repo_id, "f.txt", revision=new)) == b"v2"
    assert api.model_info(repo_id, revision=old).sha == old

    # Re-uploading identical content is a no-op (preupload returns the remote oid), as on the real Hub.
    assert api.upload_file(path_or_fileobj=b"v2", path_in_repo="f.txt", repo_id=repo_id).oid == new
    assert hub.head(repo_id) == new

    api.delete_file("g.txt", repo_id=repo_id)
    assert "g.txt" not in api.list_repo_files(repo_id)
    assert "g.txt" in api.list_repo_files(repo_id, revision=new)
    with pytest.raises(EntryNotFoundError):
        api.delete_file("g.txt", repo_id=repo_id)

    api.create_branch(repo_id, branch="dev", revision=old)
    assert _read(hf_hub_download(repo_id, "f.txt", revision="dev")) == b"v1"
    api.create_tag(repo_id, tag="v1.0", revision=new)
    assert hub.refs(repo_id)["refs/tags/v1.0"] == new


def test_missing_repo_file_and_revision_raise_hub_errors(hub, hf_cache, hf_token):
    repo_id = hub.unique_repo_id("errors")
    hub.add_commit(repo_id, {"config.json": "{}"})
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("user/does-not-exist", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("user/does-not-exist")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(repo_id, "missing.json")
    with pytest.raises(EntryNotFoundError):  # the base class also catches it
        hf_hub_download(repo_id, "missing.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "config.json", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        HfApi().list_repo_files(repo_id, revision="0" * 40)


def test_push_without_token_fails(hub, hf_cache):
    repo_id = hub.unique_repo_id("anon")
    hub.create_repo(repo_id)
    head = hub.head(repo_id)
    api = HfApi()  # no HF_TOKEN in the environment, no token file in the fresh HF_HOME
    with pytest.raises(HfHubHTTPError) as info:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert info.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as info:
        api.create_repo(hub.unique_repo_id("anon"))
    assert info.value.response.status_code == 401
    assert hub.head(repo_id) == head
    assert _read(hf_hub_download(repo_id, ".gitattributes")) == hub.repo_files(repo_id)[".gitattributes"]


def test_private_repo_needs_token_to_read(hub, hf_cache, hf_token):
    api = HfApi()
    repo_id = hub.unique_repo_id("private")
    api.create_repo(repo_id, private=True)
    api.upload_file(path_or_fileobj=b"secret", path_in_repo="s.txt", repo_id=repo_id)
    assert hub.is_private(repo_id) and api.model_info(repo_id).private
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_id, "s.txt", token=False)
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).list_repo_files(repo_id)
    assert _read(hf_hub_download(repo_id, "s.txt")) == b"secret"  # HF_TOKEN is used implicitly
    with pytest.raises(HfHubHTTPError) as info:  # (hf_hub_download would fall back to the cached copy)
        HfApi(token="hf_wrong_token").model_info(repo_id)
    assert info.value.response.status_code == 401


def test_failed_commit_leaves_repo_unchanged(hub, hf_cache, hf_token, tmp_path):
    api = HfApi()
    repo_id = hub.unique_repo_id("fail")
    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=b"keep", path_in_repo="keep.txt", repo_id=repo_id)
    head, files, n = hub.head(repo_id), hub.repo_files(repo_id), len(hub.commits(repo_id))

    hub.fail_next_commit()
    with pytest.raises(HfHubHTTPError) as info:
        api.upload_folder(repo_id=repo_id, folder_path=_write_folder(tmp_path / "src", FILES))
    assert info.value.response.status_code == 500
    assert hub.head(repo_id) == head and hub.repo_files(repo_id) == files and len(hub.commits(repo_id)) == n
    assert api.model_info(repo_id).sha == head

    api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "src")  # the switch fired only once
    assert set(FILES) <= set(hub.repo_files(repo_id))


def test_offline_mode_reads_from_cache(hub, hf_cache, hf_token, hf_offline):
    repo_id = hub.unique_repo_id("offline")
    sha = hub.add_commit(repo_id, {"a.txt": "A", "b.txt": "B"})
    online_path = hf_hub_download(repo_id, "a.txt")
    n_requests = len(hub.requests)

    hf_offline()
    assert _read(hf_hub_download(repo_id, "a.txt")) == b"A"
    assert _read(hf_hub_download(repo_id, "a.txt", revision=sha)) == b"A"
    assert hf_hub_download(repo_id, "a.txt") == online_path
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(repo_id, "b.txt")
    assert len(hub.requests) == n_requests  # nothing reached the server

    hf_offline(False)
    assert _read(hf_hub_download(repo_id, "b.txt")) == b"B"


def test_transformers_autoconfig_through_fake_hub(hub, hf_cache, hf_token, hf_offline):
    from transformers import AutoConfig, GPT2Config

    repo_id = hub.unique_repo_id("gpt2-tiny")
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=1000, n_positions=128)
    config.push_to_hub(repo_id)  # transformers' own upload path (create_repo + create_commit)
    assert "config.json" in hub.repo_files(repo_id)

    loaded = AutoConfig.from_pretrained(repo_id)
    assert type(loaded) is GPT2Config
    assert (loaded.n_layer, loaded.n_embd, loaded.vocab_size) == (2, 64, 1000)
    assert str(hf_cache) in str(next(hf_cache.rglob("config.json")))

    hf_offline()
    assert AutoConfig.from_pretrained(repo_id).n_embd == 64
    with pytest.raises(OSError):
        AutoConfig.from_pretrained(hub.unique_repo_id("never-downloaded"))


def test_range_requests_and_headers(hub):
    repo_id = hub.unique_repo_id("range")
    sha = hub.add_commit(repo_id, {"blob.bin": bytes(range(100))})
    url = f"{hub.url}/{repo_id}/resolve/main/blob.bin"

    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as resp:
        assert resp.headers["X-Repo-Commit"] == sha
        assert resp.headers["Content-Length"] == "100" and resp.headers["ETag"].startswith('"')
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=10-19"})) as resp:
        assert resp.status == 206 and resp.read() == bytes(range(10, 20))
        assert resp.headers["Content-Range"] == "bytes 10-19/100"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=-5"})) as resp:
        assert resp.read() == bytes(range(95, 100))
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{hub.url}/{repo_id}/resolve/main/nope.bin")
    assert info.value.code == 404 and info.value.headers["X-Error-Code"] == "EntryNotFound"
    assert info.value.headers["X-Repo-Commit"] == sha
