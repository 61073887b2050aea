"""The browser's output folder: written only when it is new, empty, or one the browser wrote before.

A site rewrites its `data/` folder and its `index.html` on every build, so `--out` must never be a folder that
holds the user's own files. The browser marks each folder it writes with `MARKER`; a folder that exists, is
not empty and has no marker is refused in one line, before any statistics are computed, and left untouched.
"""
from __future__ import annotations

from pathlib import Path

MARKER = ".hf_e2e_sae_browser"
_MARKER_TEXT = "This folder was written by `hf-e2e-sae browse`, which may delete and rewrite what it holds.\n"


class BrowserFolderError(ValueError):
    """`--out` is a folder (or file) that the browser did not write: it is left as it is."""


def check_browser_folder(out) -> Path:
    """`out` as a Path if the browser may write there (new, empty, or marked as the browser's); else raise."""
    out = Path(out)
    if not out.exists() or (out / MARKER).is_file():
        return out
    if not out.is_dir():
        raise BrowserFolderError(f"--out {out} is a file, not a folder: choose a new or empty folder.")
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    if entries:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise BrowserFolderError(
            f"--out {out} holds files that hf-e2e-sae browse did not write ({shown}): it deletes and rewrites "
            f"what its folder holds, so choose a new or empty folder (a folder it wrote has a {MARKER} file).")
    return out


def claim_browser_folder(out) -> Path:
    """Check `out`, create it and mark it as the browser's; returns it."""
    out = check_browser_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / MARKER
    if not marker.is_file():
        marker.write_text(_MARKER_TEXT)
    return out
