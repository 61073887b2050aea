"""One rule for the folders users hand to any command or loader (`push`, `convert`, `browse`, `geometry`,
`SAEPatchedModel.from_pretrained`, `load_sae`):

* a trainer's output folder stands for its `final/` save (unless the folder is itself a save);
* a path that looks local (`./x`, `/x`, `~/x`, `a/b/c`, or `a/b` where `a` is a folder here) is never looked up on
  the Hub: if it does not exist, that is said at once, instead of after the Hub client's retries.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

FINAL_DIR = "final"
# Files that make a folder a save in itself (ours, transformers', SAELens's): such a folder is not a run folder.
_SAVE_FILES = ("hf_e2e_sae.json", "config.json", "cfg.json")


def looks_local(path: Union[str, os.PathLike]) -> bool:
    """Whether `path` can only mean something on this machine (a Hub repo id is `name` or `org/name`)."""
    text = str(path)
    if text.startswith(("./", "../", "/", "~", ".\\")) or os.path.exists(os.path.expanduser(text)):
        return True
    parts = text.replace("\\", "/").split("/")
    return len(parts) > 2 or (len(parts) == 2 and os.path.isdir(parts[0]))


def resolve_saved_path(path: Union[str, os.PathLike], subfolder: str = "") -> str:
    """`path` itself, its `final/` when it is a trainer output folder, or a `FileNotFoundError` naming a local path
    that does not exist. Hub repo ids pass through unchanged."""
    text = str(path)
    where = Path(os.path.expanduser(text))
    if where.is_dir():
        final = where / FINAL_DIR
        if not subfolder and final.is_dir() and not any((where / f).is_file() for f in _SAVE_FILES):
            return str(final)
        return text
    if looks_local(text):
        raise FileNotFoundError(f"{text} does not exist (or is not a folder); a Hub repo id looks like 'org/name'")
    return text
