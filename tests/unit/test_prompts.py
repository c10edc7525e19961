# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Prompt assembly: index arithmetic, the batched text pass against ``CLIP.encode_text``, pairing."""

import open_clip
import pytest
import torch

from anomalib_bayes_pfl.model.config import PromptConfig
from anomalib_bayes_pfl.model.prompts import (
    ClassNameTokenizer,
    PromptBank,
    encode_prompts,
    prompt_class_name,
)


def test_eot_moves_by_learnable_count_minus_one():
    tokenizer = ClassNameTokenizer(num_learnable_tokens=10, context_length=77)
    tokens = tokenizer(["bottle", "metal_nut"])
    plain = open_clip.tokenize(["X bottle", "X metal nut"])
    original_eot = plain.argmax(dim=-1)
    assert torch.equal(tokens.eot_positions, original_eot + 9)
    assert tokens.length == int(original_eot.max()) + 10
    assert tokens.length <= 77
    assert torch.equal(tokens.token_ids, plain)


def test_class_name_aliases_and_errors():
    assert prompt_class_name("pcb3") == "printed circuit board"
    assert prompt_class_name("Metal_Nut") == "metal_nut"
    assert prompt_class_name("metal_nut") == "metal nut"
    with pytest.raises(ValueError, match="class name is empty"):
        prompt_class_name("  ")
    tokenizer = ClassNameTokenizer(num_learnable_tokens=10, context_length=77)
    with pytest.raises(ValueError, match="too long"):
        tokenizer(["word " * 70])
    with pytest.raises(TypeError, match="one per image"):
        tokenizer("bottle")


def test_batched_prompts_equal_encode_text(tiny_clip):
    """Learnable vectors set to real word embeddings reproduce CLIP's own encoding of that text."""
    words = open_clip.tokenize(["red shiny"])[0, 1:3]
    learnable = tiny_clip.token_embedding(words)  # (2, W): P + Q = 2 vectors
    tokenizer = ClassNameTokenizer(num_learnable_tokens=2, context_length=77)
    names = ["bottle", "toothbrush", "metal_nut"]
    tokens = tokenizer(names)
    batch = learnable.expand(3, 4, -1, -1)  # 4 identical prompts per image
    encoded = encode_prompts(tiny_clip, batch, tokens)
    reference = tiny_clip.encode_text(
        open_clip.tokenize(["red shiny bottle", "red shiny toothbrush", "red shiny metal nut"])
    )
    for prompt in range(4):
        torch.testing.assert_close(encoded[:, prompt], reference, rtol=0, atol=1e-5)


def test_truncation_does_not_change_output(tiny_clip):
    """Cutting the sequence after the last end-of-text token leaves every end-of-text feature unchanged."""
    tokenizer = ClassNameTokenizer(num_learnable_tokens=4, context_length=77)
    tokens = tokenizer(["bottle", "printed circuit board"])
    learnable = torch.randn(2, 3, 4, 32)
    truncated = encode_prompts(tiny_clip, learnable, tokens)
    full = encode_prompts(tiny_clip, learnable, tokens._replace(length=77))
    torch.testing.assert_close(truncated, full, rtol=0, atol=1e-5)


def test_bank_initialisation_and_gradients():
    bank = PromptBank(PromptConfig(num_prompts=3, context_len=5, state_len=5), width=32)
    assert bank.context.shape == (3, 5, 32)
    assert abs(bank.state_normal.mean().item() - 0.5) < 0.01
    assert abs(bank.state_abnormal.mean().item() + 0.5) < 0.01
    out = bank(None, None, None, num_images=2, num_samples=1)
    out.sum().backward()
    assert bank.context.grad is not None


def test_shift_layout_and_normal_abnormal_pairing():
    """Context shifts follow (sample, image); state shifts follow the sample; the pair shares both."""
    config = PromptConfig(num_prompts=3, context_len=2, state_len=1)
    bank = PromptBank(config, width=8)
    with torch.no_grad():
        bank.state_abnormal.copy_(bank.state_normal)
    context_shift = torch.randn(4, 2, 8)  # R=4, N=2
    state_shift = torch.randn(4, 8)
    out = bank(context_shift, state_shift, state_shift, num_images=2, num_samples=4)
    assert out.shape == (2, 2, 4, 3, 3, 8)
    torch.testing.assert_close(out[1, 0, 2, 1, :2], bank.context[1] + context_shift[2, 1])
    torch.testing.assert_close(out[1, 0, 2, 1, 2], bank.state_normal[1, 0] + state_shift[2])
    flat = out.reshape(2, 2 * 4 * 3, 3, 8)
    half = 4 * 3
    torch.testing.assert_close(flat[:, :half], flat[:, half:])  # item i pairs with i + B*R
    other = bank(context_shift, state_shift, -state_shift, num_images=2, num_samples=4).reshape(2, 24, 3, 8)
    assert not torch.allclose(other[:, :half], other[:, half:])
