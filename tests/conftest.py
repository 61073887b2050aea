"""Pytest wiring for the fake Hugging Face Hub in ``tests/hub_server.py``.

``huggingface_hub`` copies ``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` ... into
``huggingface_hub.constants`` when it is first imported (and ``HfApi()`` / the module-level ``api``
object copy the endpoint when they are built), so the environment is set here, at conftest import,
before any test module imports huggingface_hub / transformers / datasets. The fake Hub's port is
chosen now; the server itself starts with the session fixture ``hub``. Until then the endpoint
refuses connections, so nothing in the test session can ever reach huggingface.co.

Fixtures:
* ``hub`` (session): the running :class:`FakeHub` (``hub.url`` is the endpoint).
* ``hf_cache`` (function): a fresh, empty HF home + hub cache for the test; returns the hub cache Path.
* ``hf_token`` (function): a token the fake Hub accepts, also exported as ``HF_TOKEN`` for the test.
* ``hf_offline`` (function): ``hf_offline(True)`` / ``hf_offline(False)`` switches ``HF_HUB_OFFLINE``
  inside the test (huggingface_hub and transformers both read ``constants.HF_HUB_OFFLINE`` at call time).
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hub_server import DEFAULT_TOKEN, FakeHub  # noqa: E402


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_HUB_PORT = _free_port()
_HUB_URL = f"http://127.0.0.1:{_HUB_PORT}"
_SESSION_HF_HOME = tempfile.mkdtemp(prefix="hf_e2e_sae_hf_home_")
atexit.register(shutil.rmtree, _SESSION_HF_HOME, True)

for _var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HUGGINGFACE_CO_STAGING", "TRANSFORMERS_OFFLINE",
             "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HF_XET_CACHE", "HF_TOKEN_PATH", "HF_HUB_ENABLE_HF_TRANSFER"):
    os.environ.pop(_var, None)
os.environ.update({
    "HF_ENDPOINT": _HUB_URL,
    "HF_HOME": _SESSION_HF_HOME,
    "HF_HUB_CACHE": os.path.join(_SESSION_HF_HOME, "hub"),
    "HF_HUB_OFFLINE": "0",
    "HF_HUB_DISABLE_XET": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
})
os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))
os.environ["no_proxy"] = os.environ["NO_PROXY"]

from huggingface_hub import constants as hf_constants  # noqa: E402  (must come after the env setup)


def _point_client_at(url: str) -> None:
    """Re-point already-imported clients at ``url`` (only needed if they were imported before this file)."""
    os.environ["HF_ENDPOINT"] = url
    hf_constants.ENDPOINT = url
    hf_constants.HUGGINGFACE_CO_URL_TEMPLATE = url + "/{repo_id}/resolve/{revision}/{filename}"
    import huggingface_hub.hf_api

    huggingface_hub.hf_api.api.endpoint = url
    if "transformers.utils.hub" in sys.modules:
        sys.modules["transformers.utils.hub"]._hf_api = None  # lazily rebuilt from constants.ENDPOINT
    if "datasets.config" in sys.modules:
        sys.modules["datasets.config"].HF_ENDPOINT = url
        sys.modules["datasets.config"].HUB_DATASETS_URL = url + "/datasets/{repo_id}/resolve/{revision}/{path}"


if hf_constants.ENDPOINT != _HUB_URL or hf_constants.HF_HUB_OFFLINE:  # huggingface_hub was imported earlier
    _point_client_at(_HUB_URL)
    hf_constants.HF_HUB_OFFLINE = False


@pytest.fixture(scope="session")
def hub():
    """The fake Hub, serving on 127.0.0.1 for the whole session (state is shared: use ``hub.unique_repo_id()``)."""
    fake = FakeHub(port=_HUB_PORT)
    try:
        fake.start()
    except OSError:  # the port was taken in the meantime: serve elsewhere and re-point the clients
        fake = FakeHub(port=0).start()
        _point_client_at(fake.url)
    yield fake
    fake.stop()
    assert not fake.errors, "FakeHub internal errors:\n" + "\n".join(fake.errors)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """A fresh HF home (``tmp_path/hf_home``) and hub cache for this test; returns the hub cache directory."""
    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    for name, value in {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
    }.items():
        monkeypatch.setattr(hf_constants, name, value)
    import huggingface_hub.utils._cache_manager as cache_manager  # did `from ..constants import HF_HUB_CACHE`

    monkeypatch.setattr(cache_manager, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def hf_token(hub, monkeypatch) -> str:
    """A valid token for ``hub``, exported as ``HF_TOKEN`` so implicit-token code paths use it."""
    monkeypatch.setenv("HF_TOKEN", DEFAULT_TOKEN)
    return DEFAULT_TOKEN


@pytest.fixture
def hf_offline(monkeypatch):
    """Call ``hf_offline()`` (or ``hf_offline(False)``) to switch HF offline mode within the test."""

    def set_offline(enabled: bool = True) -> None:
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", enabled)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1" if enabled else "0")
        if "datasets.config" in sys.modules:
            monkeypatch.setattr(sys.modules["datasets.config"], "HF_HUB_OFFLINE", enabled)
            monkeypatch.setattr(sys.modules["datasets.config"], "HF_DATASETS_OFFLINE", enabled)

    return set_offline
