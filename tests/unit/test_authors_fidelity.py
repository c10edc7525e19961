# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Fidelity to the authors' code, on numbers their code computed (tests/fixtures/authors_reference/README.md).

The fixture holds a tiny CLIP, a tiny head in the authors' checkpoint format, inputs and every random draw, and
what the authors' code (xiaozhen228/Bayes-PFL, commit 8f155a0) computed from them: inference intermediates, maps
and image probabilities, and one training step per stage with every loss term and gradient. ``BayesPFL`` is built
from the same files, the recorded draws are injected, and every quantity is compared at
``1e-5 * max(1, max |authors|)``. A change that alters scores must keep this test green by default.
"""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from anomalib.data import ImageBatch

from anomalib_bayes_pfl import BayesPFL
from anomalib_bayes_pfl.model import flows
from anomalib_bayes_pfl.model.backbone import ImageFeatures, interpolate_positional_embedding
from anomalib_bayes_pfl.model.loss import dice_loss, focal_loss, orthogonality_loss
from anomalib_bayes_pfl.model.reference_checkpoint import REFERENCE_KEY, convert_reference_state_dict
from anomalib_bayes_pfl.model.scoring import smooth, upsample
from anomalib_bayes_pfl.model.torch_model import TrainingNoise
from anomalib_bayes_pfl.model.training import training_loss

FIXTURE = Path(__file__).parents[1] / "fixtures" / "authors_reference"
TOLERANCE = 1e-5


class Comparisons:
    """Every compared quantity of one test, so that a failure lists all the rows that differ, not only the first."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.count = 0

    def __call__(self, name: str, ours: torch.Tensor, authors: torch.Tensor) -> None:
        """The fixture's verdict: max |authors - ours| <= tol * max(1, max |authors|)."""
        self.count += 1
        ours, authors = ours.detach().float(), authors.float()
        if ours.shape != authors.shape:
            self.failures.append(f"{name}: shape {tuple(ours.shape)} vs {tuple(authors.shape)}")
            return
        difference = float((ours - authors).abs().max())
        limit = TOLERANCE * max(1.0, float(authors.abs().max()))
        if not difference <= limit:
            self.failures.append(f"{name}: max abs difference {difference:.3g} > {limit:.3g}")

    def assert_all(self) -> None:
        listed = "\n  ".join(self.failures)
        assert not self.failures, f"{len(self.failures)} of {self.count} quantities differ:\n  {listed}"


class FlowRecorder:
    """The samples each distribution draws and the KL terms the loss adds, read at the model's own seams."""

    def __init__(self, model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
        self.samples: dict[str, torch.Tensor] = {}
        self.kl_terms: list[torch.Tensor] = []
        self.handles = [
            getattr(model.distributions, name).register_forward_hook(self._hook(name))
            for name in ("image_specific", "normal", "abnormal")
        ]
        original_kl = flows.kl_divergence

        def recording_kl(*args: object, **kwargs: object) -> torch.Tensor:
            term = original_kl(*args, **kwargs)
            self.kl_terms.append(term.detach())
            return term

        monkeypatch.setattr(flows, "kl_divergence", recording_kl)

    def _hook(self, name: str) -> Callable[[torch.nn.Module, object, flows.FlowSample], None]:
        def record(module: torch.nn.Module, inputs: object, output: flows.FlowSample) -> None:
            del module, inputs
            self.samples[name] = output.zk.detach()

        return record

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE / "authors_reference_tiny.pt", weights_only=True)


@pytest.fixture(scope="module")
def module(reference, tmp_path_factory) -> BayesPFL:
    """BayesPFL built from the fixture's CLIP and head files, as a user would load the authors' checkpoint."""
    folder = tmp_path_factory.mktemp("authors")
    clip_state = dict(reference["clip_state_dict"])
    table = torch.zeros(reference["clip_vocab_size"], reference["clip_token_rows"].shape[1], dtype=torch.float16)
    table[reference["clip_token_ids"]] = reference["clip_token_rows"]
    clip_state["token_embedding.weight"] = table
    torch.save(clip_state, folder / "clip.pt")
    torch.save({REFERENCE_KEY: reference["head_state_dict"]}, folder / "train_tiny.pth")
    return BayesPFL(
        clip_model=str(FIXTURE / "bayes-pfl-authors-tiny.json"),
        clip_pretrained=str(folder / "clip.pt"),
        prompt_weights=str(folder / "train_tiny.pth"),
        image_size=64,
        tap_layers=[3, 6, 9, 12],
        num_prompts=2,
        prompt_context_len=2,
        prompt_state_len=2,
        num_flow_steps=2,
        num_samples=3,
        smoothing_sigma=1.0,
    )


def test_inference_matches_the_authors(reference, module, monkeypatch):
    compare = Comparisons()
    model = module.model.eval()
    samples = reference["R"]
    grid = reference["infer_images"].shape[-1] // 8  # patch size 8
    compare(
        "positional table after the 6x6 -> 8x8 resize",
        interpolate_positional_embedding(model.clip.visual.positional_embedding, grid),
        reference["authors_clip_visual_positional_embedding"],
    )
    recorder = FlowRecorder(model, monkeypatch)
    for index, class_name in enumerate(reference["infer_class_names"]):
        image = reference["infer_images"][index : index + 1].float()
        eps = reference["infer_eps"]
        # The authors cache the image-agnostic samples of the first image and reuse them (noise contract).
        model.eval_context_noise = eps[index, :samples].unsqueeze(1)
        model.eval_normal_noise = eps[0, samples : 2 * samples]
        model.eval_abnormal_noise = eps[0, 2 * samples :]
        with torch.no_grad():
            tokens = model.class_tokens([class_name], image)
            features = model.encode_images(image)
            noise = (model.eval_context_noise, model.eval_normal_noise, model.eval_abnormal_noise)
            text, _ = model.encode_text(features.global_features, tokens, noise)
            isd_samples, normal_samples, abnormal_samples = (
                recorder.samples[name] for name in ("image_specific", "normal", "abnormal")
            )
            layer_logits = model.layer_pixel_logits(text, features.patch_tokens)
            rca_text = [
                model.rca(text, model.rca.project_patches(tokens_of_layer, layer))
                for layer, tokens_of_layer in enumerate(features.patch_tokens)
            ]
            scores = {}
            for stage in (2, 1):
                model.image_head_stage = stage
                scores[stage] = model.score(image, [class_name])
                logits = model.image_head(text, features.global_features, features.patch_tokens, stage=stage)
                compare(
                    f"image {index} stage-{stage} image logits",
                    logits[0],
                    reference[f"infer_pro_img_stage{stage}"][index],
                )
            fuse = model.image_head.patch_pooling(features.patch_tokens)
        compare(f"image {index} token ids", tokens.token_ids[0], reference["infer_tokens"][index])
        compare(f"image {index} global feature", features.global_features[0], reference["infer_image_features"][index])
        compare(f"image {index} ISD samples", isd_samples[:, 0], reference["infer_zk_isd"][index])
        compare(f"image {index} normal IAD samples", normal_samples, reference["infer_zk_normal"])
        compare(f"image {index} abnormal IAD samples", abnormal_samples, reference["infer_zk_abnormal"])
        compare(f"image {index} text embeddings", text[0], reference["infer_text_embeddings"][index])
        for layer in range(4):
            compare(f"image {index} RCA text {layer}", rca_text[layer][0], reference["infer_rca_text"][index, layer])
            compare(
                f"image {index} pixel logits {layer}",
                layer_logits[layer][0],
                reference["infer_pixel_logits"][index, layer],
            )
            normal, abnormal = layer_logits[layer].chunk(2, dim=1)
            layer_map = torch.sigmoid(upsample(abnormal - normal, (64, 64))).mean(dim=1)
            compare(f"image {index} map of block {layer}", layer_map[0], reference["infer_layer_maps"][index, layer])
        compare(f"image {index} fuse", fuse[0], reference["infer_fuse"][index])
        stage_two = scores[2]
        compare(f"image {index} raw map", stage_two.raw_anomaly_map[0], reference["infer_anomaly_map"][index])
        compare(f"image {index} map sigma 1", stage_two.anomaly_map[0], reference["infer_anomaly_map_sigma1"][index])
        compare(
            f"image {index} map sigma 8",
            smooth(stage_two.raw_anomaly_map, 8.0)[0],
            reference["infer_anomaly_map_sigma8"][index],
        )
        for stage in (2, 1):
            compare(
                f"image {index} stage-{stage} probability",
                scores[stage].pred_score[0],
                reference[f"infer_pr_sp_stage{stage}"][index],
            )
    recorder.remove()
    model.image_head_stage = 2
    compare.assert_all()


@pytest.mark.parametrize("stage", [1, 2])
def test_training_step_matches_the_authors(reference, module, monkeypatch, stage):
    compare = Comparisons()
    model = module.model.train()
    model.image_head_stage = stage
    noise = TrainingNoise(  # the authors' own draws, injected: no generator is patched
        reference[f"train_s{stage}_eps_isd"].unsqueeze(0),
        reference[f"train_s{stage}_eps_normal"],
        reference[f"train_s{stage}_eps_abnormal"],
    )
    recorder = FlowRecorder(model, monkeypatch)
    features: list[torch.Tensor] = []
    encode_images = model.encode_images

    def recording_encode_images(images: torch.Tensor) -> ImageFeatures:
        encoded = encode_images(images)
        features.append(encoded.global_features.detach())
        return encoded

    monkeypatch.setattr(model, "encode_images", recording_encode_images)
    prompt_index = reference[f"train_s{stage}_prompt_index"]
    masks = reference["train_masks"].float()
    batch = ImageBatch(
        image=reference["train_images"].float(),
        gt_label=reference["train_labels"],
        gt_mask=masks,
        mask_path=["mask.png", ""],  # the anomalous image has a mask file
    )
    model.zero_grad()
    output, terms = training_loss(  # the module's own training path, minus the optimiser
        model, module.loss, batch, reference["train_class_names"], stage, noise=noise, prompt_index=int(prompt_index)
    )
    monkeypatch.undo()
    recorder.remove()
    terms.total.backward()
    compare(f"stage {stage} image features", features[0], reference["train_image_features"])
    compare(f"stage {stage} text embeddings", output.text_embeddings, reference[f"train_s{stage}_text_embeddings"])
    compare(f"stage {stage} image logits", output.image_logits, reference[f"train_s{stage}_pro_img"])
    compare(f"stage {stage} classification loss", terms.classification, reference[f"train_s{stage}_loss_class"])
    compare(f"stage {stage} total loss", terms.total, reference[f"train_s{stage}_loss_total"])
    if stage == 1:
        pair = [prompt_index, prompt_index + len(output.text_embeddings[0]) // 2]
        for layer, logits in enumerate(output.pixel_logits):
            compare(f"pixel logits {layer}", logits, reference["train_s1_pixel_logits"][:, layer])
            probabilities = upsample(logits[:, pair], masks.shape[-2:]).softmax(dim=1)
            compare(f"focal {layer}", focal_loss(probabilities, masks), reference["train_s1_loss_focal_layers"][layer])
            compare(
                f"dice {layer}", dice_loss(probabilities[:, 1], masks), reference["train_s1_loss_dice_layers"][layer]
            )
        compare("focal", terms.focal, reference["train_s1_loss_focal"])
        compare("dice", terms.dice, reference["train_s1_loss_dice"])
        compare("distribution", terms.distribution, reference["train_s1_loss_distribution"])
        for name, term in zip(("isd", "normal", "abnormal"), recorder.kl_terms, strict=True):
            compare(f"KL {name} x weight", module.loss.kl_weight * term, reference[f"train_s1_loss_kl_{name}_x0.01"])
        isd, normal, abnormal = (recorder.samples[name] for name in ("image_specific", "normal", "abnormal"))
        compare("ISD samples", isd[0], reference["train_s1_zk_isd"])  # one training sample (R = 1) per image
        compare("normal IAD samples", normal, reference["train_s1_zk_normal"])
        compare("abnormal IAD samples", abnormal, reference["train_s1_zk_abnormal"])
        compare("orthogonality", orthogonality_loss(output.text_embeddings), reference["train_s1_loss_orthogonality"])
    expected = convert_reference_state_dict(reference[f"train_s{stage}_grads"])
    if stage == 2:  # our stage 2 computes no gradient before the image head, by design
        expected = {name: grad for name, grad in expected.items() if name.startswith("image_head.")}
    parameters = dict(model.named_parameters())
    for name, grad in expected.items():
        ours = parameters[name].grad
        assert ours is not None, f"stage {stage}: no gradient for {name}"
        compare(f"stage {stage} gradient of {name}", ours.reshape(grad.shape), grad)
    model.zero_grad()
    model.eval()
    compare.assert_all()
