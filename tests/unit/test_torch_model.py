# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""BayesPFLModel: outputs, batch independence, reproducibility, frozen CLIP, parameter groups, faithful size."""

from pathlib import Path

import pytest
import torch
from anomalib.data import InferenceBatch

from anomalib_bayes_pfl.model import BayesPFLModel
from anomalib_bayes_pfl.model.config import FlowConfig, PromptConfig
from anomalib_bayes_pfl.model.flows import PromptDistributions
from anomalib_bayes_pfl.model.image_head import ImageClassificationHead
from anomalib_bayes_pfl.model.prompts import PromptBank
from anomalib_bayes_pfl.model.rca import ResidualCrossModalAttention

from ..helpers import tiny_config

IMAGES = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(7))
NAMES = ["bottle", "screw", "bottle", "pcb1", "carpet"]


def test_eval_output(tiny_model):
    with torch.no_grad():
        output = tiny_model(IMAGES, NAMES)
    assert isinstance(output, InferenceBatch)
    assert output.pred_score.shape == (5,)
    assert output.anomaly_map.shape == (5, 64, 64)
    assert ((output.pred_score >= 0) & (output.pred_score <= 1)).all()
    assert ((output.anomaly_map >= 0) & (output.anomaly_map <= 1)).all()


def test_scores_do_not_depend_on_the_batch(tiny_model):
    with torch.no_grad():
        together = tiny_model(IMAGES, NAMES)
        alone = [tiny_model(IMAGES[i : i + 1], NAMES[i : i + 1]) for i in range(5)]
        reversed_batch = tiny_model(IMAGES.flip(0), NAMES[::-1])
    torch.testing.assert_close(torch.cat([a.pred_score for a in alone]), together.pred_score, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.cat([a.anomaly_map for a in alone]), together.anomaly_map, rtol=0, atol=1e-5)
    torch.testing.assert_close(reversed_batch.pred_score.flip(0), together.pred_score, rtol=0, atol=1e-5)


def test_evaluation_is_reproducible_and_seeded(tiny_clip):
    torch.manual_seed(0)
    first = BayesPFLModel(tiny_config(), tiny_clip).eval()
    second = BayesPFLModel(tiny_config(), tiny_clip).eval()
    second.load_state_dict(first.state_dict())
    torch.manual_seed(999)  # the global RNG does not matter
    with torch.no_grad():
        torch.testing.assert_close(first(IMAGES, NAMES).pred_score, second(IMAGES, NAMES).pred_score, rtol=0, atol=0)
    other_seed = tiny_config(scoring=tiny_config().scoring.__class__(num_samples=3, smoothing_sigma=1.0, eval_seed=1))
    third = BayesPFLModel(other_seed, tiny_clip).eval()
    third.load_state_dict(first.state_dict())
    with torch.no_grad():
        assert not torch.allclose(first(IMAGES, NAMES).pred_score, third(IMAGES, NAMES).pred_score)


def test_each_image_gets_its_own_class_prompt(tiny_model):
    with torch.no_grad():
        as_bottle = tiny_model(IMAGES[:1], ["bottle"]).pred_score
        as_screw = tiny_model(IMAGES[:1], ["screw"]).pred_score
        default = tiny_model(IMAGES[:1]).pred_score
        as_object = tiny_model(IMAGES[:1], ["object"]).pred_score
    assert not torch.allclose(as_bottle, as_screw)
    torch.testing.assert_close(default, as_object)
    with pytest.raises(ValueError, match="2 class names for 5 images"):
        tiny_model(IMAGES, ["a", "b"])


def test_training_output_and_frozen_clip(tiny_model):
    tiny_model.train()
    assert not tiny_model.clip.training
    output = tiny_model(IMAGES[:2], NAMES[:2])
    assert output.image_logits.shape == (2, 4)
    assert [tuple(p.shape) for p in output.pixel_logits] == [(2, 4, 8, 8)] * 4
    assert output.text_embeddings.shape == (2, 4, 32)
    (output.image_logits.sum() + sum(p.sum() for p in output.pixel_logits) + output.kl).backward()
    assert all(p.grad is None for p in tiny_model.clip.parameters())
    assert tiny_model.prompts.context.grad is not None
    assert tiny_model.distributions.image_specific.flow_u.weight.grad is not None
    assert tiny_model.distributions.normal.state.grad is not None


def test_stage_two_trains_only_the_classifier(tiny_model):
    tiny_model.train()
    tiny_model.image_head_stage = 2
    output = tiny_model(IMAGES[:2], NAMES[:2])
    assert output.pixel_logits == []
    output.image_logits.sum().backward()
    classifier = {id(p) for p in tiny_model.parameter_groups()["classifier"]}
    for name, parameter in tiny_model.named_parameters():
        if id(parameter) in classifier:
            assert parameter.grad is not None, name
        elif name != "image_head.logit_scale":
            assert parameter.grad is None, name


def test_parameter_groups_partition_the_head(tiny_model):
    groups = tiny_model.parameter_groups()
    stage_one = [p for name in ("prompts", "temperatures", "flows", "other") for p in groups[name]]
    trainable = [p for p in tiny_model.parameters() if p.requires_grad]
    assert len({id(p) for p in stage_one}) == len(stage_one) == len(trainable)
    assert {id(p) for p in groups["classifier"]} <= {id(p) for p in groups["other"]}
    assert len(groups["temperatures"]) == 2
    assert len(groups["prompts"]) == 3


def test_extra_state_round_trip(tiny_clip, tiny_model):
    tiny_model.image_head_stage, tiny_model.is_trained = 2, True
    state = tiny_model.state_dict()
    fresh = BayesPFLModel(tiny_config(), tiny_clip)
    fresh.load_state_dict(state)
    assert (fresh.image_head_stage, fresh.is_trained) == (2, True)
    assert not any(key.startswith("clip.") for key in tiny_model.head_state_dict())


def _text(model: BayesPFLModel, features: torch.Tensor, seed: int) -> torch.Tensor:
    """Text embeddings of ``features`` for class "bottle" under the noise drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    samples, dim = model.config.scoring.num_samples, features.shape[-1]
    noise = tuple(
        torch.randn(shape, generator=generator) for shape in ((samples, 1, dim), (samples, dim), (samples, dim))
    )
    tokens = model.class_tokens(["bottle"] * features.shape[0], IMAGES[: features.shape[0]])
    return model.encode_text(features, tokens, noise)[0]


def test_ablation_without_residual_attention_keeps_the_text(tiny_clip):
    model = BayesPFLModel(tiny_config(residual_attention=False), tiny_clip).eval()
    assert model.rca.query is None
    with torch.no_grad():
        features = model.encode_images(IMAGES[:2])
        text = _text(model, features.global_features, seed=0)
        patches = model.rca.project_patches(features.patch_tokens[0], 0)
        torch.testing.assert_close(model.rca(text, patches), text)


def test_ablation_without_flow_steps_samples_the_gaussian(tiny_clip):
    model = BayesPFLModel(tiny_config(flow=FlowConfig(num_flow_steps=0)), tiny_clip).eval()
    with torch.no_grad():
        features = model.encode_images(IMAGES[:2]).global_features
        sample = model.distributions.image_specific(features, torch.randn(3, 2, features.shape[-1]))
    torch.testing.assert_close(sample.zk, sample.z0)
    assert not sample.log_det.any()


def test_ablation_without_the_image_specific_distribution_ignores_the_image(tiny_clip):
    model = BayesPFLModel(tiny_config(flow=FlowConfig(num_flow_steps=3, image_specific=False)), tiny_clip).eval()
    assert model.distributions.image_specific is None
    with torch.no_grad():
        features = model.encode_images(IMAGES[:2]).global_features
        text = _text(model, features, seed=0)
    torch.testing.assert_close(text[0], text[1])  # two images, one class: only the image-specific shift differs
    full = BayesPFLModel(tiny_config(flow=FlowConfig(num_flow_steps=3)), tiny_clip).eval()
    with torch.no_grad():
        text = _text(full, full.encode_images(IMAGES[:2]).global_features, seed=0)
    assert not torch.allclose(text[0], text[1])


def test_ablation_without_the_image_agnostic_distributions_ignores_their_noise(tiny_clip):
    model = BayesPFLModel(tiny_config(flow=FlowConfig(num_flow_steps=3, image_agnostic=False)), tiny_clip).eval()
    with torch.no_grad():
        features = model.encode_images(IMAGES[:1]).global_features
        tokens = model.class_tokens(["bottle"], IMAGES[:1])
        samples, dim = model.config.scoring.num_samples, features.shape[-1]
        image_specific = torch.randn(samples, 1, dim)

        def text(state_noise: torch.Tensor) -> torch.Tensor:
            return model.encode_text(features, tokens, (image_specific, state_noise, -state_noise))[0]

        # Other normal/abnormal noise, same text: the state vectors are not shifted.
        torch.testing.assert_close(text(torch.randn(samples, dim)), text(torch.randn(samples, dim)))
        # The image-specific noise still shifts the context vectors.
        assert not torch.allclose(_text(model, features, seed=0), _text(model, features, seed=1))


def test_rejects_clip_with_different_joint_and_text_width(tiny_clip_path, tmp_path):
    import json

    config = json.loads(Path(tiny_clip_path).read_text())
    config["embed_dim"] = 48
    path = tmp_path / "wide-clip.json"
    path.write_text(json.dumps(config))
    from anomalib_bayes_pfl.model import load_clip

    with pytest.raises(ValueError, match="joint embedding width 48 but text width 32"):
        BayesPFLModel(tiny_config(), load_clip(str(path), pretrained=None))


def test_head_size_of_the_default_configuration():
    """ViT-L/14 dimensions: the authors' 27,370,017 parameters less their unused decoders and p_mu layers."""
    embed, vision, layers = 768, 1024, 4
    modules = [
        PromptBank(PromptConfig(), embed),
        PromptDistributions(FlowConfig(), embed, vision // 2),
        ResidualCrossModalAttention(vision, embed, layers),
        ImageClassificationHead(vision, embed, layers),
    ]
    count = sum(p.numel() for module in modules for p in module.parameters()) + 1  # + pixel temperature
    unused = 2 * 1_050_368 + 3 * 590_592  # the authors' unused decoders and p_mu layers (VPB.py L205-225)
    assert count == 27_370_017 - unused


def test_reduced_precision_clip_keeps_float32_outputs_close(tiny_clip, tiny_model):
    bf16 = BayesPFLModel(tiny_config(clip_precision="bf16"), tiny_clip).eval()
    bf16.load_state_dict(tiny_model.state_dict())
    with torch.no_grad():
        reference = tiny_model(IMAGES, NAMES)
        reduced = bf16(IMAGES, NAMES)
    assert reduced.pred_score.dtype == torch.float32
    assert reduced.anomaly_map.dtype == torch.float32
    torch.testing.assert_close(reduced.pred_score, reference.pred_score, rtol=0, atol=0.05)
    with pytest.raises(ValueError, match="clip_precision"):
        tiny_config(clip_precision="int8")


def test_batched_text_pass_equals_the_per_prompt_loop(tiny_model):
    """One text-tower call for N * 2 * R * B truncated prompts equals the authors' loop over 77-token prompts."""
    import open_clip

    model, clip = tiny_model, tiny_model.clip
    features = torch.randn(2, 32)
    names = ["bottle", "printed circuit board"]
    samples, bank = 3, 2
    noise = (torch.randn(samples, 2, 32), torch.randn(samples, 32), torch.randn(samples, 32))
    with torch.no_grad():
        batched, _ = model.encode_text(features, model.tokenizer(names), noise)
        shifts = model.distributions(features, *noise)
        states = ((model.prompts.state_normal, shifts.normal), (model.prompts.state_abnormal, shifts.abnormal))
        for n, name in enumerate(names):
            tokens = open_clip.tokenize([f"X {name}"])[0]
            embedded = clip.token_embedding(tokens)
            eot = int(tokens.argmax())
            for s, (state, state_shift) in enumerate(states):
                for r in range(samples):
                    for b in range(bank):
                        learned = torch.cat(
                            [model.prompts.context[b] + shifts.context[r, n], state[b] + state_shift[r]]
                        )
                        sequence = torch.cat([embedded[:1], learned, embedded[2 : 77 - len(learned) + 1]])
                        x = (sequence + clip.positional_embedding)[:, None]
                        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask)[:, 0])
                        expected = torch.nn.functional.normalize(
                            x[eot + len(learned) - 1] @ clip.text_projection, dim=-1
                        )
                        index = s * samples * bank + r * bank + b
                        torch.testing.assert_close(batched[n, index], expected, rtol=0, atol=1e-5)
