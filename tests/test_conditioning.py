"""Spatial blending, temporal transitions and the per-stream prompt state machine."""

from __future__ import annotations

import math

import pytest
import torch

from scope.params import PromptItem, Transition
from scope.pipelines.wan.conditioning import (
    PromptConditioner,
    blend,
    blend_linear,
    normalize_prompts,
    slerp_tokens,
    transition_grid,
)

# Blending --------------------------------------------------------------------------------------


def test_linear_blend_preserves_the_weighted_norm_by_hand():
    e1 = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # norm 1
    e2 = torch.tensor([[0.0, 2.0], [0.0, 0.0]])  # norm 2
    out = blend_linear([e1, e2], [1.0, 3.0])
    # w = (0.25, 0.75): sum = [[0.25, 1.5], [0, 0]], norm sqrt(2.3125); target 0.25*1 + 0.75*2 = 1.75
    scale = 1.75 / math.sqrt(2.3125)
    torch.testing.assert_close(out, torch.tensor([[0.25 * scale, 1.5 * scale], [0.0, 0.0]]))
    assert out.norm().item() == pytest.approx(1.75, rel=1e-6)


def test_linear_blend_normalises_weights():
    e1, e2 = torch.tensor([[3.0, 1.0]]), torch.tensor([[-1.0, 2.0]])
    torch.testing.assert_close(blend_linear([e1, e2], [2.0, 6.0]), blend_linear([e1, e2], [0.25, 0.75]))
    uniform = blend_linear([e1, e2], [0.5, 0.5])
    torch.testing.assert_close(blend_linear([e1, e2], [0.0, 0.0]), uniform)
    torch.testing.assert_close(blend_linear([e1, e2], [-1.0, -2.0]), uniform)
    # equal weights by hand: sum = [1, 1.5], norm sqrt(3.25); target (sqrt(10) + sqrt(5)) / 2
    scale = (math.sqrt(10) + math.sqrt(5)) / 2 / math.sqrt(3.25)
    torch.testing.assert_close(uniform, torch.tensor([[1.0 * scale, 1.5 * scale]]))


def test_single_prompt_blend_is_the_prompt():
    e = torch.randn(1, 5, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(blend([e], [0.3]), e)


def test_slerp_of_orthogonal_unit_vectors_is_45_degrees():
    e1 = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])
    e2 = torch.tensor([[[0.0, 1.0], [3.0, 0.0]]])
    out = slerp_tokens(e1, e2, 0.5)
    c = math.cos(math.pi / 4)
    torch.testing.assert_close(out, torch.tensor([[[c, c], [3 * c, 3 * c]]]), rtol=1e-6, atol=1e-6)
    quarter = slerp_tokens(e1, e2, 0.25)[0, 0]
    torch.testing.assert_close(quarter, torch.tensor([math.cos(math.pi / 8), math.sin(math.pi / 8)]))


def test_slerp_falls_back_to_lerp_when_all_tokens_are_parallel():
    e1 = torch.tensor([[[2.0, 0.0], [0.0, -0.5]]])
    e2 = 3.0 * e1
    assert torch.equal(slerp_tokens(e1, e2, 0.25), 0.75 * e1 + 0.25 * e2)
    # one non-parallel token is enough to leave the fallback: the parallel one then collapses
    e2[0, 1] = torch.tensor([0.5, 0.0])
    out = slerp_tokens(e1, e2, 0.25)
    assert torch.count_nonzero(out[0, 0]) == 0 and out[0, 1].norm() > 0.4


def test_blend_uses_slerp_only_for_two_prompts_with_t_equal_to_the_second_weight():
    e1, e2, e3 = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 1.0]]]), torch.tensor([[[1.0, 1.0]]])
    out = blend([e1, e2], [1.0, 3.0], "slerp")
    angle = 0.75 * math.pi / 2
    torch.testing.assert_close(out[0, 0], torch.tensor([math.cos(angle), math.sin(angle)]))
    torch.testing.assert_close(blend([e1, e2, e3], [1, 1, 1], "slerp"), blend_linear([e1, e2, e3], [1, 1, 1]))
    torch.testing.assert_close(blend([e1, e2], [1, 3], "linear"), blend_linear([e1, e2], [1, 3]))
    with pytest.raises(ValueError):
        blend([e1, e2], [1.0])


def test_transition_grid_endpoints_count_and_skip():
    gen = torch.Generator().manual_seed(1)
    source, target = torch.randn(1, 6, 4, generator=gen), torch.randn(1, 6, 4, generator=gen)
    grid = transition_grid(source, target, 4)
    assert len(grid) == 4
    assert torch.equal(grid[0], source) and torch.equal(grid[-1], target)
    torch.testing.assert_close(grid[1], source + (target - source) / 3)
    torch.testing.assert_close(grid[2], source + 2 * (target - source) / 3)
    slerped = transition_grid(source, target, 3, "slerp")
    assert len(slerped) == 3
    torch.testing.assert_close(slerped[0], source)
    torch.testing.assert_close(slerped[-1], target)
    assert transition_grid(source, source + 0.001, 4) == []
    assert transition_grid(source, target, 0) == []
    one = transition_grid(source, target, 1)
    assert len(one) == 1 and torch.equal(one[0], source)


# Prompt inputs ---------------------------------------------------------------------------------


def test_prompt_forms_normalise_to_text_and_weight():
    expected = [{"text": "a", "weight": 1.0}]
    assert normalize_prompts("a") == expected
    assert normalize_prompts(["a"]) == expected
    assert normalize_prompts([{"text": "a"}]) == expected
    assert normalize_prompts([PromptItem(text="a", weight=2)]) == [{"text": "a", "weight": 2.0}]
    assert normalize_prompts(None) == []
    with pytest.raises(ValueError):
        normalize_prompts([3])


# The state machine -----------------------------------------------------------------------------


class FakeEncoder:
    """Distinct, deterministic embeddings per text; records every batch it encodes."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def vector(self, text: str) -> torch.Tensor:
        gen = torch.Generator().manual_seed(sum(map(ord, text)) * 7919 + len(text))
        return torch.randn(1, 8, 6, generator=gen)

    def __call__(self, texts):
        self.calls.append(list(texts))
        return torch.cat([self.vector(t) for t in texts])


def _transition(text, steps=4, method="linear"):
    return {"target_prompts": [{"text": text, "weight": 1.0}], "num_steps": steps, "temporal_interpolation_method": method}


@pytest.fixture
def enc():
    return FakeEncoder()


def test_first_prompt_snaps_and_unchanged_prompts_report_nothing(enc):
    cond = PromptConditioner(enc)
    first = cond.update("a cat")
    assert first.changed and not first.transition_active
    assert torch.equal(first.embedding, enc.vector("a cat"))
    assert first.current_prompts == [{"text": "a cat", "weight": 1.0}]
    again = cond.update([{"text": "a cat", "weight": 1}])
    assert again.embedding is None and not again.changed
    assert enc.calls == [["a cat"]]


def test_first_prompt_with_a_transition_snaps(enc):
    cond = PromptConditioner(enc)
    update = cond.update("a cat", _transition("a dog"))
    assert update.changed and not update.transition_active
    assert torch.equal(update.embedding, enc.vector("a dog"))


def test_no_prompts_yet_gives_no_embedding(enc):
    cond = PromptConditioner(enc)
    update = cond.update(None)
    assert update.embedding is None and not update.changed and cond.embedding is None
    assert enc.calls == []


def test_transition_walks_the_grid_then_holds_the_target_without_bounce_back(enc):
    cond = PromptConditioner(enc)
    cond.update("a cat")
    source, target = enc.vector("a cat"), enc.vector("a dog")
    expected = [source + (target - source) * t for t in (0.0, 1 / 3, 2 / 3, 1.0)]
    seen, active = [], []
    for _ in range(4):  # the server re-sends the transition and the stale prompts until told it ended
        update = cond.update("a cat", _transition("a dog"))
        assert update.changed
        seen.append(update.embedding)
        active.append(update.transition_active)
    assert active == [True, True, True, False]
    for got, want in zip(seen, expected, strict=True):
        torch.testing.assert_close(got, want)
    assert torch.equal(seen[-1], target)
    assert update.current_prompts == [{"text": "a dog", "weight": 1.0}]
    for _ in range(3):  # transition dropped, stale "a cat" still sent: no bounce back
        update = cond.update("a cat")
        assert update.embedding is None and not update.changed and not update.transition_active
        assert update.current_prompts == [{"text": "a dog", "weight": 1.0}]
    assert torch.equal(cond.embedding, target)
    assert enc.calls == [["a cat"], ["a dog"]]
    changed = cond.update("a fox")
    assert changed.changed and torch.equal(changed.embedding, enc.vector("a fox"))


def test_transition_accepts_the_validated_model(enc):
    cond = PromptConditioner(enc)
    cond.update("a cat")
    model = Transition(target_prompts="a dog", num_steps=2, temporal_interpolation_method="slerp")
    first = cond.update("a cat", model)
    second = cond.update("a cat", model)
    torch.testing.assert_close(first.embedding, enc.vector("a cat"))
    torch.testing.assert_close(second.embedding, enc.vector("a dog"))
    assert first.transition_active and not second.transition_active


def test_zero_step_transition_snaps(enc):
    cond = PromptConditioner(enc)
    cond.update("a cat")
    update = cond.update("a cat", _transition("a dog", steps=0))
    assert update.changed and not update.transition_active
    assert torch.equal(update.embedding, enc.vector("a dog"))


def test_transition_to_the_same_embedding_is_skipped(enc):
    cond = PromptConditioner(enc)
    cond.update("a cat")
    update = cond.update("a cat", {"target_prompts": [{"text": "a cat", "weight": 2.0}], "num_steps": 4})
    assert not update.changed and update.embedding is None and not update.transition_active
    assert update.current_prompts == [{"text": "a cat", "weight": 2.0}]


def test_a_new_change_mid_transition_cancels_the_queue(enc):
    cond = PromptConditioner(enc)
    cond.update("a cat")
    cond.update("a cat", _transition("a dog"))
    mid = cond.update("a cat", _transition("a dog")).embedding
    first = cond.update("a cat", _transition("a fox", steps=2))
    assert first.transition_active and torch.equal(first.embedding, mid)
    last = cond.update("a cat", _transition("a fox", steps=2))
    assert not last.transition_active and torch.equal(last.embedding, enc.vector("a fox"))
    assert cond.update("a cat").embedding is None


def test_a_plain_prompt_change_mid_transition_snaps(enc):
    cond = PromptConditioner(enc)
    cond.update("a cat")
    cond.update("a cat", _transition("a dog"))
    update = cond.update("a fox")
    assert update.changed and not update.transition_active
    assert torch.equal(update.embedding, enc.vector("a fox"))
    assert cond.update("a fox").embedding is None


def test_init_cache_resets_everything(enc):
    cond = PromptConditioner(enc)
    cond.update("a cat")
    cond.update("a cat", _transition("a dog"))
    update = cond.update("a cat", init_cache=True)
    assert update.changed and not update.transition_active
    assert torch.equal(update.embedding, enc.vector("a cat"))
    assert enc.calls[-1] == ["a cat"]
    assert update.current_prompts == [{"text": "a cat", "weight": 1.0}]


def test_weighted_prompts_are_blended_spatially(enc):
    cond = PromptConditioner(enc)
    prompts = [{"text": "a cat", "weight": 1.0}, {"text": "a dog", "weight": 3.0}]
    update = cond.update(prompts)
    assert enc.calls == [["a cat", "a dog"]]
    torch.testing.assert_close(update.embedding, blend_linear([enc.vector("a cat"), enc.vector("a dog")], [1, 3]))
    slerped = PromptConditioner(enc).update(prompts, spatial_method="slerp")
    torch.testing.assert_close(slerped.embedding, slerp_tokens(enc.vector("a cat"), enc.vector("a dog"), 0.75))
    reweighted = cond.update([{"text": "a cat", "weight": 3.0}, {"text": "a dog", "weight": 1.0}])
    assert reweighted.changed


def test_prompt_embeds_replace_prompts(enc):
    cond = PromptConditioner(enc)
    x = enc.vector("x")
    first = cond.update(None, prompt_embeds=x)
    assert first.changed and torch.equal(first.embedding, x) and first.current_prompts is None
    assert cond.update(None, prompt_embeds=x.clone()).embedding is None
    assert cond.update("ignored", prompt_embeds=x[0]).embedding is None
    scaled = cond.update(None, prompt_embeds=x * 3.0)
    assert scaled.changed and torch.equal(scaled.embedding, x * 3.0)
    y = enc.vector("y")
    mixed = cond.update(None, prompt_embeds=[(x, 1.0), (y, 3.0)])
    torch.testing.assert_close(mixed.embedding, blend_linear([x, y], [1.0, 3.0]))
    steps = [cond.update(None, {"num_steps": 3}, prompt_embeds=y) for _ in range(3)]
    assert [s.transition_active for s in steps] == [True, True, False]
    torch.testing.assert_close(steps[0].embedding, mixed.embedding)
    assert torch.equal(steps[-1].embedding, y)
    assert enc.calls == []
    back = cond.update("a cat")
    assert back.changed and torch.equal(back.embedding, enc.vector("a cat"))


def test_prompt_embeds_shape_is_checked(enc):
    with pytest.raises(ValueError):
        PromptConditioner(enc).update(None, prompt_embeds=torch.zeros(2, 3, 4, 5))
