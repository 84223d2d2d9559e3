"""models/hooks.py: one unwrap for tensor and tuple outputs, hooks gone after use (even on error), and the
base `teacher_forced_states` on an adapter that only supplies its forward."""

import pytest
import torch
from torch import nn

from coxlmm.models import hooks
from coxlmm.models.base import LMM


class Block(nn.Module):
    """A decoder block returning its states as a tensor, or as the first item of a tuple / list."""

    def __init__(self, H: int, form: str):
        super().__init__()
        self.lin, self.form = nn.Linear(H, H), form

    def forward(self, h):
        h = h + self.lin(h)
        return {"tensor": h, "tuple": (h, "attn"), "list": [h, "attn"]}[self.form]


@pytest.mark.parametrize("form", ["tensor", "tuple", "list"])
def test_unwrap_and_rewrap_keep_the_output_form(form):
    torch.manual_seed(0)
    block = Block(4, form)
    out = block(torch.randn(2, 3, 4))
    h = hooks.hidden(out)
    assert torch.is_tensor(h) and h.shape == (2, 3, 4)
    new = hooks.with_hidden(out, torch.zeros_like(h))
    assert type(new) is type(out) and torch.equal(hooks.hidden(new), torch.zeros_like(h))
    if form != "tensor":
        assert new[1] == "attn"


@pytest.mark.parametrize("form", ["tensor", "tuple"])
def test_edits_capture_and_removal(form):
    torch.manual_seed(0)
    block, x = Block(4, form), torch.randn(2, 3, 4)
    plain = hooks.hidden(block(x))
    with hooks.capture({"b": block}) as kept, hooks.capture_last({"b": block}) as last:
        block(x)
        block(x[:, :2])
    assert torch.equal(kept["b"], plain[:, :2]) and len(last["b"]) == 2
    assert torch.equal(last["b"][0], plain[:, -1]) and torch.equal(last["b"][1], plain[:, 1])

    states = torch.full((2, 4), 7.0)
    with hooks.hooked((block, hooks.replace_rows(torch.tensor([0, 1]), torch.tensor([2, 0]), states))):
        h = hooks.hidden(block(x))
    assert torch.equal(h[0, 2], states[0]) and torch.equal(h[1, 0], states[1]) and torch.equal(h[0, :2], plain[0, :2])

    d = torch.ones(2, 4)
    with hooks.hooked((block, hooks.add_delta(d))):
        h = hooks.hidden(block(x))
    assert torch.allclose(h[:, -1], plain[:, -1] + 1) and torch.equal(h[:, :-1], plain[:, :-1])
    with hooks.hooked((block, hooks.add_delta(d, "all"))):
        assert torch.allclose(hooks.hidden(block(x)), plain + 1)
    with hooks.hooked((block, hooks.transform_span(1, 2, lambda z: -z))):
        h = hooks.hidden(block(x))
    assert torch.equal(h[:, 1:], -plain[:, 1:]) and torch.equal(h[:, 0], plain[:, 0])

    # every hook above is gone, and one that raises is removed as well
    assert not block._forward_hooks
    with pytest.raises(RuntimeError), hooks.hooked((block, hooks.add_delta(d))):
        raise RuntimeError("a failing forward")
    assert not block._forward_hooks and torch.equal(hooks.hidden(block(x)), plain)


class TupleLM(LMM):
    """An adapter that supplies only what differs: its blocks, its norm and `forward_sequence`."""

    model_id, prompt, num_layers, hidden_size = "tuple-lm", "", 2, 4

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 4)
        self.blocks = nn.ModuleList([Block(4, "tuple"), Block(4, "tensor")])
        self.norm = nn.LayerNorm(4)

    def forward_sequence(self, inputs, generated):
        h = self.emb(torch.cat([inputs["input_ids"], generated], 1))
        for b in self.blocks:
            h = hooks.hidden(b(h))
        self.norm(h)

    def prepare(self, images):
        return {"input_ids": torch.tensor([[1, 2, 3]] * len(images))}

    def generate(self, inputs, max_new_tokens):
        raise NotImplementedError

    def decoder_layers(self):
        return self.blocks

    def norm_module(self):
        return self.norm

    @property
    def W_U(self):
        return self.emb.weight


def test_teacher_forced_states_is_the_base_one_on_the_adapter_forward():
    lm = TupleLM()
    inputs, gen = lm.prepare([None, None]), torch.tensor([[4, 5], [6, 7]])
    with torch.no_grad():
        h0 = hooks.hidden(lm.blocks[0](lm.emb(torch.cat([inputs["input_ids"], gen], 1))))
        h1 = hooks.hidden(lm.blocks[1](h0))
    out = lm.teacher_forced_states(inputs, gen, [0, -1, "norm"])
    assert set(out) == {0, -1, "norm"}
    assert torch.equal(out[0], h0[:, 2:4]) and torch.equal(out[-1], h1[:, 2:4])  # columns P-1 .. P-1+T
    assert torch.allclose(out["norm"], lm.norm(h1)[:, 2:4])
    assert not any(m._forward_hooks for m in lm.modules())
