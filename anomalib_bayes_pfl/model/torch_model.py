# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""PyTorch model of Bayes-PFL: frozen CLIP taps, prompt flows, batched text pass, RCA, maps and scores.

Data flows top to bottom in :meth:`BayesPFLModel.forward`: image taps, distribution samples, prompt vectors,
text tower, RCA and pixel logits per layer, anomaly map, image probability. The model has no trainer, optimiser
or file I/O; in eval mode it returns anomalib's ``InferenceBatch``.

Evaluation noise is drawn once, from ``config.scoring.eval_seed``, and shared by all images: each image still
gets its own samples (its Gaussian and flows depend on its features), and its scores do not depend on the batch
it is in or on the evaluation order. The authors redraw the image-specific noise per image and cache the
image-agnostic samples at the first test image (authors: VPB.py L277-283).

Only the frozen CLIP towers compute in reduced precision (``clip_precision`` or the trainer's mixed precision); the
head computes in float32 under any autocast (``precision.py``).

Shape legend: N images, B prompt sets, R samples, L patch tokens, C vision width, D joint width.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from anomalib.data import InferenceBatch
from open_clip.model import CLIP
from torch import nn

from anomalib_bayes_pfl.data.class_names import DEFAULT_CLASS_NAME

from .backbone import ImageFeatures, check_image_tower, encode_image_taps
from .config import BayesPFLConfig, resolve_tap_layers
from .flows import PromptDistributions
from .image_head import ImageClassificationHead
from .precision import clip_precision, head_precision
from .prompts import ClassNameTokenizer, ClassTokens, PromptBank, encode_prompts
from .rca import ResidualCrossModalAttention
from .references import ReferenceMemory, fuse_few_shot
from .scoring import image_probability, pair_image_probabilities, pixel_logits, sampled_anomaly_maps, smooth
from .uncertainty import UncertaintyMeasure, sample_uncertainty


class BayesPFLTrainOutput(NamedTuple):
    """What the losses need from one training forward pass.

    Attributes:
        image_logits: ``(N, 2B)`` image logits, normal half first.
        pixel_logits: Per tapped layer ``(N, 2B, g, g)`` pixel logits; empty in stage 2.
        text_embeddings: ``(N, 2B, D)`` unit-norm text embeddings.
        kl: Unweighted sum of the distributions' KL terms.
    """

    image_logits: torch.Tensor
    pixel_logits: list[torch.Tensor]
    text_embeddings: torch.Tensor
    kl: torch.Tensor


class TrainingNoise(NamedTuple):
    """The standard-normal draws of one training step (one sample per image and per image-agnostic distribution).

    Attributes:
        image_specific: ``(1, N, D)`` draws for the image-specific distribution.
        normal: ``(1, D)`` draws for the normal image-agnostic distribution.
        abnormal: ``(1, D)`` draws for the abnormal one.
    """

    image_specific: torch.Tensor
    normal: torch.Tensor
    abnormal: torch.Tensor


class BayesPFLScores(NamedTuple):
    """Evaluation outputs, with the unsmoothed map that the authors' top-k image score reads.

    Attributes:
        pred_score: ``(N,)`` mean abnormal probability over the B * R image-level pairs.
        anomaly_map: ``(N, H, W)`` smoothed anomaly map.
        raw_anomaly_map: ``(N, H, W)`` the same map before smoothing.
        uncertainty: ``(N,)`` disagreement of the B * R image probabilities (``uncertainty.py``), if asked for.
        uncertainty_map: ``(N, H, W)`` disagreement of the B * R anomaly maps per pixel (before smoothing), smoothed
            like the anomaly map, if asked for.
    """

    pred_score: torch.Tensor
    anomaly_map: torch.Tensor
    raw_anomaly_map: torch.Tensor
    uncertainty: torch.Tensor | None = None
    uncertainty_map: torch.Tensor | None = None


class BayesPFLModel(nn.Module):
    """Bayes-PFL head around a frozen CLIP.

    Args:
        config: Head configuration.
        clip: A frozen open_clip ``CLIP`` from :func:`~anomalib_bayes_pfl.model.backbone.load_clip`. Its joint
            embedding width must equal its text width, because samples in the joint space shift text tokens.
        clip_name: Name used in error messages.

    Example:
        >>> from anomalib_bayes_pfl.assets import TINY_CLIP_CONFIG
        >>> from anomalib_bayes_pfl.model.backbone import load_clip
        >>> clip = load_clip(TINY_CLIP_CONFIG, pretrained=None)
        >>> model = BayesPFLModel(BayesPFLConfig(tap_layers=(1, 2, 3, 4)), clip).eval()
        >>> output = model(torch.randn(2, 3, 64, 64), ["bottle", "screw"])
        >>> output.pred_score.shape, output.anomaly_map.shape
        (torch.Size([2]), torch.Size([2, 64, 64]))
    """

    def __init__(self, config: BayesPFLConfig, clip: CLIP, *, clip_name: str = "CLIP") -> None:
        super().__init__()
        check_image_tower(clip)
        embed_dim = clip.text_projection.shape[-1]
        text_width = clip.token_embedding.embedding_dim
        vision_width = clip.visual.conv1.out_channels
        if embed_dim != text_width:
            msg = (
                f"'{clip_name}' has joint embedding width {embed_dim} but text width {text_width}; Bayes-PFL shifts "
                f"text tokens by samples in the joint space, so the two must be equal (true for ViT-L/14, ViT-B/16)."
            )
            raise ValueError(msg)
        self.config = config
        self.tap_layers = resolve_tap_layers(config.tap_layers, len(clip.visual.transformer.resblocks), clip_name)
        self.clip = clip.requires_grad_(False).eval()
        self.tokenizer = ClassNameTokenizer(
            config.prompt.context_len + config.prompt.state_len, clip.positional_embedding.shape[0]
        )
        self.prompts = PromptBank(config.prompt, text_width)
        self.distributions = PromptDistributions(config.flow, embed_dim, vision_width // 2)
        self.rca = ResidualCrossModalAttention(
            vision_width,
            embed_dim,
            len(self.tap_layers),
            num_heads=config.attention_heads,
            enabled=config.residual_attention,
        )
        self.image_head = ImageClassificationHead(vision_width, embed_dim, len(self.tap_layers))
        self.pixel_logit_scale = nn.Parameter(torch.log(torch.tensor(1 / 0.07)))
        generator = torch.Generator().manual_seed(config.scoring.eval_seed)
        # On the CPU, as the generator: Lightning builds the model under its root device as the default device.
        noise = torch.randn(3, config.scoring.num_samples, embed_dim, generator=generator, device="cpu")
        self.register_buffer("eval_context_noise", noise[0].unsqueeze(1), persistent=False)
        self.register_buffer("eval_normal_noise", noise[1], persistent=False)
        self.register_buffer("eval_abnormal_noise", noise[2], persistent=False)
        self.default_class_name = DEFAULT_CLASS_NAME
        self.image_head_stage = 1
        self.is_trained = False
        self.references = ReferenceMemory()
        self.few_shot = False  # whether scores fuse the references' memory (``k_shot > 0``)

    def get_extra_state(self) -> dict[str, Any]:
        """Store which image head scores images, whether the head was trained and the references, with the weights."""
        return {
            "image_head_stage": self.image_head_stage,
            "is_trained": self.is_trained,
            "references": self.references.state(),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_extra_state` stored (checkpoints written before few-shot have no references)."""
        self.image_head_stage = int(state["image_head_stage"])
        self.is_trained = bool(state["is_trained"])
        self.references.load(state.get("references"))

    def encode_images(self, images: torch.Tensor) -> ImageFeatures:
        """Global feature and tapped patch tokens of ``images``, in float32 whatever the CLIP precision."""
        with clip_precision(self.config.clip_precision, images.device):
            features = encode_image_taps(self.clip, images, self.tap_layers)
        return ImageFeatures(features.global_features.float(), [tokens.float() for tokens in features.patch_tokens])

    def train(self, mode: bool = True) -> "BayesPFLModel":
        """Switch the head's mode; the frozen CLIP always stays in eval mode."""
        super().train(mode)
        self.clip.eval()
        return self

    def head_state_dict(self) -> dict[str, Any]:
        """Return the state dict without the frozen CLIP, which is rebuilt from its source on load."""
        return {key: value for key, value in self.state_dict().items() if not key.startswith("clip.")}

    def zero_from_every_trainable_parameter(self) -> torch.Tensor:
        """Zero that depends on every trainable parameter; added to a loss, it puts each in the graph.

        Parameters a stage does not train then get zero gradients instead of none, so that DistributedDataParallel
        needs no search for unused parameters (plain ``--trainer.strategy ddp``).
        """
        return 0.0 * sum(parameter.sum() for parameter in self.parameters() if parameter.requires_grad)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by learning-rate group (authors: train.py L133-161).

        Returns:
            ``prompts`` (prompt vectors), ``temperatures``, ``flows`` (flow parameters and IAD input vectors),
            ``other`` (Gaussian encoders, RCA, image head), and ``classifier`` (the stage-2 subset of ``other``).
        """
        groups: dict[str, list[nn.Parameter]] = {"prompts": [], "temperatures": [], "flows": [], "other": []}
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            if name.startswith("prompts."):
                groups["prompts"].append(parameter)
            elif name.endswith("logit_scale"):
                groups["temperatures"].append(parameter)
            elif name.startswith("distributions.") and (".flow_" in name or name.endswith(".state")):
                groups["flows"].append(parameter)
            else:
                groups["other"].append(parameter)
        head = self.image_head
        groups["classifier"] = [
            *head.text_mapping.parameters(),
            *head.image_mapping.parameters(),
            *head.patch_pooling.parameters(),
        ]
        return groups

    def class_tokens(self, class_names: Sequence[str] | None, images: torch.Tensor) -> ClassTokens:
        """Tokenised class name of each image; ``None`` gives every image ``default_class_name``.

        The default name is tokenised once and broadcast, so the batch size stays symbolic when exporting.
        """
        if class_names is None:
            tokens = self.tokenizer([self.default_class_name], device=images.device)
            num_images = images.shape[0]
            return tokens._replace(
                token_ids=tokens.token_ids.expand(num_images, -1),
                eot_positions=tokens.eot_positions.expand(num_images),
            )
        if len(class_names) != images.shape[0]:
            msg = f"got {len(class_names)} class names for {images.shape[0]} images; pass one class name per image."
            raise ValueError(msg)
        return self.tokenizer(list(class_names), device=images.device)

    def encode_text(
        self,
        features: torch.Tensor,
        tokens: ClassTokens,
        noise: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample prompt shifts and encode every prompt of every image in one text-tower pass.

        Args:
            features: ``(N, D)`` global image features.
            tokens: The tokenised class name of each image (:meth:`class_tokens`).
            noise: Standard-normal draws for the ISD ``(R, N or 1, D)`` and the two IADs ``(R, D)``.

        Returns:
            Unit-norm text embeddings ``(N, 2 * R * B, D)`` (normal half first, index ``r * B + b`` within a
            half) and the unweighted KL term.
        """
        num_samples = noise[1].shape[0]
        with head_precision(features.device):
            shifts = self.distributions(features, *noise)
            learnable = self.prompts(
                shifts.context,
                shifts.normal,
                shifts.abnormal,
                num_images=features.shape[0],
                num_samples=num_samples,
            )
        num_images, _, _, bank, num_tokens, width = learnable.shape
        learnable = learnable.reshape(num_images, 2 * num_samples * bank, num_tokens, width)
        with clip_precision(self.config.clip_precision, features.device):
            text = encode_prompts(self.clip, learnable, tokens)
        return nn.functional.normalize(text.float(), dim=-1), shifts.kl

    def layer_pixel_logits(self, text: torch.Tensor, patch_tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per tapped layer, RCA-updated text against projected patches: ``(N, T, g, g)`` each, in float32."""
        logits = []
        with head_precision(text.device):
            for layer, tokens in enumerate(patch_tokens):
                patches = self.rca.project_patches(tokens, layer)
                logits.append(pixel_logits(patches, self.rca(text, patches), self.pixel_logit_scale))
        return logits

    def forward(
        self,
        images: torch.Tensor,
        class_names: Sequence[str] | None = None,
        noise: TrainingNoise | None = None,
    ) -> InferenceBatch | BayesPFLTrainOutput:
        """Score ``images`` ``(N, 3, H, H)``, or compute the training outputs in training mode.

        Args:
            images: Pre-processed images.
            class_names: One class name per image; ``None`` uses ``default_class_name`` for all.
            noise: Training only: the step's draws (drawn from the global generator when ``None``); a test passes
                the authors' own to compare with their code.
        """
        if self.training:
            tokens = self.class_tokens(class_names, images)
            features = self.encode_images(images)
            return self._training_forward(features.global_features, features.patch_tokens, tokens, noise)
        scores = self.score(images, class_names)
        return InferenceBatch(pred_score=scores.pred_score, anomaly_map=scores.anomaly_map)

    @torch.no_grad()
    def score(
        self,
        images: torch.Tensor,
        class_names: Sequence[str] | None = None,
        *,
        few_shot: bool | None = None,
        uncertainty: UncertaintyMeasure | None = None,
    ) -> BayesPFLScores:
        """Evaluation pass with R samples per image (what :meth:`forward` returns in eval mode, and more).

        Without gradients: nothing is trained from it, and exported models return plain tensors. With
        :attr:`few_shot` (or ``few_shot=True``), each image's scores are fused with its category's reference memory
        (``references.py``). With an ``uncertainty`` measure, it also returns how much the B * R samples that each
        score averages disagree (``uncertainty.py``), from the same pass; the scores are the same bit for bit.
        """
        tokens = self.class_tokens(class_names, images)
        features = self.encode_images(images)
        noise = (self.eval_context_noise, self.eval_normal_noise, self.eval_abnormal_noise)
        text, _ = self.encode_text(features.global_features, tokens, noise)
        with head_precision(images.device):  # under any autocast: float32 scores, maps and uncertainties
            layer_logits = self.layer_pixel_logits(text, features.patch_tokens)
            raw_map, pair_maps = sampled_anomaly_maps(
                layer_logits, images.shape[-2:], keep_pairs=uncertainty is not None
            )
            image_logits = self.image_head(
                text, features.global_features, features.patch_tokens, stage=self.image_head_stage
            )
            pred_score = image_probability(image_logits)
            # (M, N), samples first; only when the uncertainty asks for them
            pair_scores = pair_image_probabilities(image_logits).transpose(0, 1) if pair_maps is not None else None
            if self.few_shot if few_shot is None else few_shot:
                patch_scores = self.references.patch_scores(features.patch_tokens, class_names, self.default_class_name)
                pred_score, raw_map = fuse_few_shot(pred_score, raw_map, patch_scores)
                if pair_maps is not None:  # each sample's scores are fused as the mean is
                    pair_scores, pair_maps = fuse_few_shot(pair_scores, pair_maps, patch_scores)
            sigma = self.config.scoring.smoothing_sigma
            scores = BayesPFLScores(pred_score, smooth(raw_map, sigma), raw_map)
            if pair_maps is None:
                return scores
            if torch.compiler.is_exporting():  # one reduction: a loop over the images would fix the exported batch size
                pixel_uncertainty = sample_uncertainty(pair_maps, uncertainty)
            else:  # one image at a time: the reduction's temporaries then take M maps of memory, not M * N
                pixel_uncertainty = torch.stack(
                    [sample_uncertainty(maps, uncertainty) for maps in pair_maps.unbind(dim=1)]
                )
            return scores._replace(
                uncertainty=sample_uncertainty(pair_scores, uncertainty),
                uncertainty_map=smooth(pixel_uncertainty, sigma),
            )

    def _training_forward(
        self,
        global_features: torch.Tensor,
        patch_tokens: list[torch.Tensor],
        tokens: ClassTokens,
        noise: TrainingNoise | None,
    ) -> BayesPFLTrainOutput:
        """One fresh sample per image and per image-agnostic distribution (authors: PFL.py L33-51)."""
        if noise is None:
            num_images, embed_dim = global_features.shape
            device = global_features.device
            noise = TrainingNoise(
                torch.randn(1, num_images, embed_dim, device=device),
                torch.randn(1, embed_dim, device=device),
                torch.randn(1, embed_dim, device=device),
            )
        stage = self.image_head_stage
        # Stage 2 trains the classifier only: nothing before it needs gradients, and no pixel map is needed.
        with torch.set_grad_enabled(stage == 1 and torch.is_grad_enabled()):
            text, kl = self.encode_text(global_features, tokens, noise)
        pixel = self.layer_pixel_logits(text, patch_tokens) if stage == 1 else []
        with head_precision(text.device):
            image_logits = self.image_head(text, global_features, patch_tokens, stage=stage)
        return BayesPFLTrainOutput(image_logits, pixel, text, kl)
