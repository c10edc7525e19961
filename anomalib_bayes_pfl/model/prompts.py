# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Prompt bank, class-name handling and one batched pass of all prompts through CLIP's text tower.

Each prompt is ``[SOT] ctx_1..P state_1..Q <class-name tokens> [EOT]``: the text ``"X <class name>"`` is
tokenised and its single placeholder token ``X`` (position 1) is replaced by the P + Q learnable vectors, so the
end-of-text token moves from position ``e`` to ``e + P + Q - 1`` and the sequence is cut back to the context
length (paper §3.2; authors: VPB.py L150-166). All sequences of a batch go through the text tower in
one call, truncated after the last end-of-text token: with CLIP's causal mask, later positions cannot change it.

Every touch of open_clip's text internals lives here; a unit test pins them against ``CLIP.encode_text``.

Shape legend: N images, B prompt sets, R samples, P context and Q state vectors, W text width, D joint width.
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer
from torch import nn

from .config import PromptConfig

# Names the authors rewrite before they enter a prompt (authors: VPB.py L8-18).
CLASS_NAME_ALIASES = {
    "macaroni1": "macaroni",
    "macaroni2": "macaroni",
    "pcb1": "printed circuit board",
    "pcb2": "printed circuit board",
    "pcb3": "printed circuit board",
    "pcb4": "printed circuit board",
    "pipe_fryum": "pipe fryum",
    "chewinggum": "chewing gum",
    "metal_nut": "metal nut",
}

PLACEHOLDER = "X"


def prompt_class_name(class_name: str) -> str:
    """Return the words that stand for ``class_name`` in the prompts (authors' aliases, lower case).

    Raises:
        ValueError: If the name is empty.
    """
    name = class_name.strip()
    if not name:
        msg = "class name is empty; pass --model.class_name or use a dataset layout that names each category."
        raise ValueError(msg)
    return CLASS_NAME_ALIASES.get(name, name).lower()


class ClassTokens(NamedTuple):
    """Tokenised class names of a batch.

    Attributes:
        token_ids: ``(N, context_length)`` token ids of ``"X <class name>"``.
        eot_positions: ``(N,)`` end-of-text positions *after* inserting the learnable vectors.
        length: Sequence length that covers every end-of-text token of the batch (the truncation point).
    """

    token_ids: torch.Tensor
    eot_positions: torch.Tensor
    length: int


class ClassNameTokenizer:
    """Tokenise class names once and cache them; the EOT positions are computed here, in Python.

    Computing the truncation length from Python integers keeps the text pass free of data-dependent shapes.

    Args:
        num_learnable_tokens: P + Q, the vectors that replace the placeholder.
        context_length: CLIP's text context length (77).
    """

    def __init__(self, num_learnable_tokens: int, context_length: int) -> None:
        self.tokenizer = SimpleTokenizer(context_length=context_length)
        self.num_learnable_tokens = num_learnable_tokens
        self.context_length = context_length
        self._cache: dict[str, tuple[torch.Tensor, int]] = {}

    def _tokenize_one(self, class_name: str) -> tuple[torch.Tensor, int]:
        if class_name not in self._cache:
            words = prompt_class_name(class_name)
            token_ids = self.tokenizer(f"{PLACEHOLDER} {words}")[0]
            eot = int((token_ids == self.tokenizer.eot_token_id).nonzero()[0, 0])
            shifted_eot = eot + self.num_learnable_tokens - 1
            if shifted_eot >= self.context_length:
                msg = (
                    f"class name '{class_name}' is too long: with {self.num_learnable_tokens} learnable vectors its "
                    f"prompt needs {shifted_eot + 1} tokens, more than CLIP's {self.context_length}."
                )
                raise ValueError(msg)
            self._cache[class_name] = (token_ids, shifted_eot)
        return self._cache[class_name]

    def __call__(self, class_names: Sequence[str], device: torch.device | None = None) -> ClassTokens:
        """Tokenise ``class_names`` (one per image)."""
        if isinstance(class_names, str):
            msg = f"class_names must be a sequence of names, one per image, got the string '{class_names}'."
            raise TypeError(msg)
        pairs = [self._tokenize_one(name) for name in class_names]
        token_ids = torch.stack([ids for ids, _ in pairs]).to(device)
        eot_positions = torch.tensor([eot for _, eot in pairs], device=device)
        return ClassTokens(token_ids, eot_positions, max(eot for _, eot in pairs) + 1)


class PromptBank(nn.Module):
    """B sets of learnable prompt vectors: shared context, and separate normal and abnormal states.

    Args:
        config: Bank sizes (B, P, Q).
        width: Text width W of CLIP's token embeddings.
    """

    def __init__(self, config: PromptConfig, width: int) -> None:
        super().__init__()
        self.config = config
        self.context = nn.Parameter(torch.empty(config.num_prompts, config.context_len, width))
        self.state_normal = nn.Parameter(torch.empty(config.num_prompts, config.state_len, width))
        self.state_abnormal = nn.Parameter(torch.empty(config.num_prompts, config.state_len, width))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated normals around 0, +0.5 and -0.5 (authors: VPB.py L234-236)."""
        nn.init.trunc_normal_(self.context, mean=0.0, std=0.02)
        nn.init.trunc_normal_(self.state_normal, mean=0.5, std=0.02)
        nn.init.trunc_normal_(self.state_abnormal, mean=-0.5, std=0.02)

    def forward(
        self,
        context_shift: torch.Tensor | None,
        normal_shift: torch.Tensor | None,
        abnormal_shift: torch.Tensor | None,
        *,
        num_images: int,
        num_samples: int,
    ) -> torch.Tensor:
        """Assemble the shifted learnable vectors of every prompt.

        Args:
            context_shift: ``(R, N, W)`` image-specific samples added to every context vector, or ``None``.
            normal_shift: ``(R, W)`` image-agnostic samples added to every normal state vector, or ``None``.
            abnormal_shift: ``(R, W)`` the same for the abnormal state vectors, or ``None``.
            num_images: N.
            num_samples: R.

        Returns:
            ``(N, 2, R, B, P + Q, W)``: normal prompts at index 0 of dim 1, abnormal at 1; round r of image n
            pairs image-specific sample r with image-agnostic sample r (authors: VPB.py L168-175).
        """
        bank, width = self.config.num_prompts, self.context.shape[-1]
        context = self.context.expand(num_images, num_samples, bank, -1, width)
        if context_shift is not None:
            context = context + context_shift.transpose(0, 1)[:, :, None, None, :]
        states = []
        for state, shift in ((self.state_normal, normal_shift), (self.state_abnormal, abnormal_shift)):
            state = state.expand(num_images, num_samples, bank, -1, width)
            if shift is not None:
                state = state + shift[None, :, None, None, :]
            states.append(torch.cat([context, state], dim=3))
        return torch.stack(states, dim=1)


def encode_prompts(clip: CLIP, learnable: torch.Tensor, class_tokens: ClassTokens) -> torch.Tensor:
    """Encode every prompt of a batch in one pass of the frozen text tower.

    Args:
        clip: The frozen CLIP (gradients still flow back to ``learnable``).
        learnable: ``(N, M, P + Q, W)`` learnable vectors of M prompts per image.
        class_tokens: The tokenised class name of each image.

    Returns:
        ``(N, M, D)`` projected end-of-text features, not normalised.
    """
    num_images, num_prompts, num_learnable, width = learnable.shape
    length = class_tokens.length
    token_embeddings = clip.token_embedding(class_tokens.token_ids[:, : length - num_learnable + 1])
    start, rest = token_embeddings[:, None, :1], token_embeddings[:, None, 2:]
    sequences = torch.cat(
        [
            start.expand(-1, num_prompts, -1, -1),
            learnable.to(token_embeddings.dtype),
            rest.expand(-1, num_prompts, -1, -1),
        ],
        dim=2,
    ).reshape(num_images * num_prompts, length, width)
    x = sequences + clip.positional_embedding[:length].to(sequences.dtype)
    x = clip.transformer(x.permute(1, 0, 2), attn_mask=clip.attn_mask[:length, :length])
    x = clip.ln_final(x.permute(1, 0, 2))
    eot = class_tokens.eot_positions.repeat_interleave(num_prompts)
    x = x[torch.arange(x.shape[0], device=x.device), eot]
    x = clip.text_projection(x) if isinstance(clip.text_projection, nn.Linear) else x @ clip.text_projection
    return x.reshape(num_images, num_prompts, -1)
