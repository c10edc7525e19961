# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Loss terms, and losses that go down when the head is trained on a tiny batch."""

import pytest
import torch

from anomalib_bayes_pfl.model import BayesPFLLoss, BayesPFLModel
from anomalib_bayes_pfl.model.loss import dice_loss, focal_loss, orthogonality_loss

from ..helpers import tiny_config


def test_focal_averages_foreground_and_background_separately():
    target = torch.zeros(1, 2, 2)
    target[0, 0, 0] = 1
    abnormal = torch.tensor([[[0.5, 0.1], [0.1, 0.1]]])
    probabilities = torch.stack([1 - abnormal, abnormal], dim=1)
    foreground = -(0.5**2) * torch.log(torch.tensor(0.5))
    background = -(0.1**2) * torch.log(torch.tensor(0.9))
    assert focal_loss(probabilities, target).item() == pytest.approx((foreground + background).item(), rel=1e-5)


def test_dice_and_orthogonality():
    target = torch.zeros(2, 4, 4)
    target[:, :2] = 1
    assert dice_loss(target.clone(), target).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(1 - target, target).item() == pytest.approx(1.0, abs=1e-4)
    basis = torch.eye(4)[None]  # B=4 mutually orthogonal normals, and the same abnormals
    assert orthogonality_loss(torch.cat([basis, basis], dim=1)).item() == pytest.approx(0.0)
    # B=2 identical embeddings per half: 2 of the 4 entries of each 2x2 cosine matrix are off-diagonal ones.
    assert orthogonality_loss(torch.ones(1, 4, 4)).item() == pytest.approx(2 * 2 / 4)


def test_stage_two_is_classification_only():
    loss = BayesPFLLoss()
    logits = torch.randn(2, 4)
    terms = loss(
        logits, [], torch.randn(2, 4, 8), torch.tensor(5.0), torch.tensor([0, 1]), None, prompt_index=1, stage=2
    )
    expected = torch.nn.functional.cross_entropy(logits[:, [1, 3]], torch.tensor([0, 1]))
    torch.testing.assert_close(terms.total, expected)


def _synthetic_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 64, 64, generator=generator) * 0.3
    masks = torch.zeros(4, 64, 64)
    masks[2:, 16:40, 20:44] = 1
    images[2:, :, 16:40, 20:44] += 2.0
    return images, masks, torch.tensor([0, 0, 1, 1])


def test_losses_go_down_on_a_tiny_batch(tiny_clip):
    torch.manual_seed(0)
    model = BayesPFLModel(tiny_config(), tiny_clip).train()
    loss_fn = BayesPFLLoss()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    images, masks, labels = _synthetic_batch()
    names = ["tile"] * 4

    def step(prompt_index: int, *, update: bool) -> torch.Tensor:
        output = model(images, names)
        terms = loss_fn(
            *output[:2], output.text_embeddings, output.kl, labels, masks, prompt_index=prompt_index, stage=1
        )
        if update:
            optimizer.zero_grad()
            terms.total.backward()
            optimizer.step()
        return torch.stack([terms.classification + terms.focal + terms.dice, terms.total]).detach()

    torch.manual_seed(123)
    before = torch.stack([step(i % 2, update=False) for i in range(6)]).mean(0)
    for i in range(40):
        step(i % 2, update=True)
    torch.manual_seed(123)
    after = torch.stack([step(i % 2, update=False) for i in range(6)]).mean(0)
    assert after[0] < 0.8 * before[0], (before, after)
    assert after[1] < before[1], (before, after)
    assert not any(p.grad is not None for p in model.clip.parameters())


def test_pixel_terms_use_only_images_with_known_masks():
    """A real anomaly without its mask must not be taught that its defect is normal."""
    loss = BayesPFLLoss()
    logits = [torch.randn(3, 4, 4, 4)]
    image_logits, text = torch.randn(3, 4), torch.randn(3, 4, 8)
    masks = torch.zeros(3, 16, 16)
    masks[2, 4:8, 4:8] = 1  # image 2: a synthetic anomaly; image 1: a real anomaly without a mask
    labels = torch.tensor([0, 1, 1])
    known = torch.tensor([True, False, True])
    selected = loss(
        image_logits, logits, text, torch.tensor(0.0), labels, masks, prompt_index=0, stage=1, has_mask=known
    )
    subset = loss(
        image_logits, [logits[0][known]], text, torch.tensor(0.0), labels, masks[known], prompt_index=0, stage=1
    )
    torch.testing.assert_close(selected.focal, subset.focal)
    torch.testing.assert_close(selected.dice, subset.dice)
    full = loss(image_logits, logits, text, torch.tensor(0.0), labels, masks, prompt_index=0, stage=1)
    assert not torch.isclose(full.focal, selected.focal)
    none = loss(
        image_logits,
        logits,
        text,
        torch.tensor(0.0),
        labels,
        masks,
        prompt_index=0,
        stage=1,
        has_mask=torch.zeros(3, dtype=torch.bool),
    )
    assert none.focal == 0
