"""Forward hooks that read or rewrite one activation, whatever form the module passes it in.

transformers 4.x blocks return tuples and 5.x blocks return Tensors; attention modules return
`(output, weights)`; blocks take the hidden state positionally or as `hidden_states=`. These helpers
hide that: a rewrite function `fn(x) -> x_new | None` (None = leave as is) is applied to the
activation, and the hook returns the same kind of object it was given.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

RewriteFn = Callable[[torch.Tensor], Optional[torch.Tensor]]


def _replace_first(value: Any, rewrite: RewriteFn) -> Any:
    """Apply `rewrite` to a Tensor or to the first element of a tuple/list; None if unchanged."""
    if isinstance(value, torch.Tensor):
        return rewrite(value)
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        new = rewrite(value[0])
        if new is None:
            return None
        return type(value)((new, *value[1:]))
    raise TypeError(f"Cannot find the activation tensor in a {type(value).__name__}")


def add_output_hook(module: nn.Module, rewrite: RewriteFn) -> RemovableHandle:
    """Hook that rewrites (or just reads) the module's output activation."""

    def hook(_module: nn.Module, _args: tuple, output: Any) -> Any:
        return _replace_first(output, rewrite)

    return module.register_forward_hook(hook)


def add_input_hook(module: nn.Module, rewrite: RewriteFn) -> RemovableHandle:
    """Hook that rewrites (or just reads) the module's hidden-state input (positional or keyword)."""

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> Optional[tuple]:
        if args:
            new_args = _replace_first(args, rewrite)
            return None if new_args is None else (new_args, kwargs)
        if "hidden_states" not in kwargs:
            raise TypeError(f"{type(_module).__name__} was called without a hidden-state input")
        new = rewrite(kwargs["hidden_states"])
        return None if new is None else (args, {**kwargs, "hidden_states": new})

    return module.register_forward_pre_hook(hook, with_kwargs=True)


def add_hook(module: nn.Module, rewrite_where: str, rewrite: RewriteFn) -> RemovableHandle:
    """`rewrite_where` is "input" or "output" (see `sites.ResolvedSite`)."""
    if rewrite_where == "input":
        return add_input_hook(module, rewrite)
    return add_output_hook(module, rewrite)
