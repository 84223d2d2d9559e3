"""Forward hooks on a model's hook points (decoder blocks, the final norm): the one place that registers them.

A hook point returns its hidden states h (B, S, H) either as a tensor or as the first item of a tuple or
list (decoder blocks of many architectures return (h, attention weights, ...)). `hidden(output)` reads h
and `with_hidden(output, h)` puts a new h back in the same form, so every hook below works on both.

    with hooked((module, fn), ...):   fn(module, args, output) runs after each forward of module while the
                                      context is open (returning a new output replaces it); removed on exit
    capture(points)                   {key: h} of the last forward of each point (B, S, H)
    capture_last(points)              {key: [h[:, -1] per forward]}: the state at the last position of each
                                      call, one (B, H) per generated token during KV-cached generation
    replace_rows(rows, cols, states)  h[rows[i], cols[i]] = states[i]
    add_delta(deltas, positions)      h[:, -1] += deltas (or every position: positions="all")
    transform_span(start, length, f)  h[:, start:start+length] = f(those states (n, H))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

Hook = Callable[[nn.Module, Any, Any], Any]


def hidden(output: Any) -> torch.Tensor:
    """The hidden states of a hook point's output: the tensor itself or the first item of a tuple/list."""
    return output[0] if isinstance(output, (tuple, list)) else output


def with_hidden(output: Any, h: torch.Tensor) -> Any:
    """`output` with its hidden states replaced by h, in the same form (tensor, tuple or list)."""
    if isinstance(output, tuple):
        return (h, *output[1:])
    if isinstance(output, list):
        return [h, *output[1:]]
    return h


@contextmanager
def hooked(*pairs: tuple[nn.Module, Hook]) -> Iterator[None]:
    """Register each (module, forward hook) for the body; every hook is removed on exit, error or not."""
    handles = []
    try:
        for module, fn in pairs:
            handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture(points: Mapping[Any, nn.Module]) -> Iterator[dict[Any, torch.Tensor]]:
    """Yield {key: hidden states (B, S, H)}, filled by the last forward of `points[key]` in the body."""
    out: dict[Any, torch.Tensor] = {}

    def keep(key):
        def fn(_module, _args, output):
            out[key] = hidden(output)
        return fn

    with hooked(*((m, keep(k)) for k, m in points.items())):
        yield out


@contextmanager
def capture_last(points: Mapping[Any, nn.Module]) -> Iterator[dict[Any, list[torch.Tensor]]]:
    """Yield {key: [(B, H) per forward call]}: the last position of every forward of `points[key]` (detached).

    During generation, the prefill call's last position predicts generated token g_0 and decode call j
    predicts g_j, so the rows line up with the generated ids."""
    out: dict[Any, list[torch.Tensor]] = {k: [] for k in points}

    def keep(key):
        def fn(_module, _args, output):
            out[key].append(hidden(output)[:, -1, :].detach())
        return fn

    with hooked(*((m, keep(k)) for k, m in points.items())):
        yield out


def replace_rows(rows: torch.Tensor, cols: torch.Tensor, states: torch.Tensor) -> Hook:
    """A hook setting h[rows[i], cols[i]] = states[i] (R, H)."""
    def fn(_module, _args, output):
        h = hidden(output).clone()
        h[rows.to(h.device), cols.to(h.device)] = states.to(h.device, h.dtype)
        return with_hidden(output, h)

    return fn


def transform_span(start: int, length: int, transform: Callable[[torch.Tensor], torch.Tensor]) -> Hook:
    """A hook replacing h[:, start:start+length] by transform(those states) (n, H) -> (n, H): the
    reconstruction (or an ablation) spliced in at every position that predicts a generated token."""
    def fn(_module, _args, output):
        h = hidden(output).clone()
        span = h[:, start:start + length]
        flat = span.reshape(-1, span.shape[-1]).clone()  # the identity transform must not alias h
        h[:, start:start + length] = transform(flat).to(h.device, h.dtype).reshape(span.shape)
        return with_hidden(output, h)

    return fn


def add_delta(deltas: torch.Tensor, positions: str = "generated") -> Hook:
    """A hook adding deltas (R, H) to the last position of every call (generation: the prefill's last
    position predicts g_0, decode call j predicts g_j), or to every position ("all")."""
    def fn(_module, _args, output):
        h = hidden(output)
        d = deltas.to(h.device, h.dtype)
        if positions == "all":
            h = h + d[:, None, :]
        else:
            h = h.clone()
            h[:, -1] += d
        return with_hidden(output, h)

    return fn
