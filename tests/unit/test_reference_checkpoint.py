# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The authors' checkpoint layout ({'MyModel': Context_Prompting.state_dict()}) loads into BayesPFLModel.

The key layout and shapes below were read from the authors' public code (models/VPB.py, models/PFL.py at commit
8f155a0): module registration order, shared encoders that appear under two names, decoders and ``p_mu`` layers
that the forward pass never uses.
"""

import pytest
import torch

from anomalib_bayes_pfl.model import BayesPFLModel
from anomalib_bayes_pfl.model.reference_checkpoint import convert_reference_state_dict, load_head_weights

from ..helpers import tiny_config

D, VISION, HIDDEN, K, B, P, Q, LAYERS = 32, 64, 32, 3, 2, 2, 2, 4


def _mlp(prefix: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for index, (out_features, in_features) in zip((0, 2, 4), ((HIDDEN, D), (HIDDEN, HIDDEN), (D, HIDDEN)), strict=True):
        shapes[f"{prefix}.module.{index}.weight"] = (out_features, in_features)
        shapes[f"{prefix}.module.{index}.bias"] = (out_features,)
    return shapes


def _encoder(prefix: str) -> dict[str, tuple[int, ...]]:
    return {**_mlp(f"{prefix}.weight_mean"), **_mlp(f"{prefix}.weight_log_variance")}


def reference_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of the authors' head state dict at tiny dimensions, in registration order."""
    shapes: dict[str, tuple[int, ...]] = {
        "prompt_context": (B, P, D),
        "prompt_state_normal": (B, Q, D),
        "prompt_state_abnormal": (B, Q, D),
        "temperature_pixel": (),
        "temperature_image": (),
        **_encoder("context_encoder"),
        **_mlp("context_decoder.weight_mean"),
        **_encoder("state_encoder"),
        **_mlp("state_decoder.weight_mean"),
        **_encoder("PFL_context.encoder"),
        **_mlp("PFL_context.decoder.weight_mean"),
        "PFL_context.p_mu.0.weight": (D, D),
        "PFL_context.p_mu.0.bias": (D,),
        "PFL_context.amor_u.weight": (K * D, D),
        "PFL_context.amor_u.bias": (K * D,),
        "PFL_context.amor_w.weight": (K * D, D),
        "PFL_context.amor_w.bias": (K * D,),
        "PFL_context.amor_b.weight": (K, D),
        "PFL_context.amor_b.bias": (K,),
    }
    for kind in ("normal", "abnormal"):
        shapes.update(_encoder(f"PFL_{kind}.encoder"))
        shapes.update(_mlp(f"PFL_{kind}.decoder.weight_mean"))
        shapes.update(
            {
                f"PFL_{kind}.p_mu.0.weight": (D, D),
                f"PFL_{kind}.p_mu.0.bias": (D,),
                f"PFL_{kind}.amor_u": (1, K, D, 1),
                f"PFL_{kind}.amor_w": (1, K, 1, D),
                f"PFL_{kind}.amor_b": (1, K, 1, 1),
                f"PFL_{kind}.state": (1, D),
            }
        )
    shapes.update(
        {
            "fuse.fuse_modules.weight": (VISION // 2, VISION * LAYERS),
            "fuse.fuse_modules.bias": (VISION // 2,),
            "fuse.compress.weight": (1, VISION // 2),
            "fuse.compress.bias": (1,),
            "fuse.post_process.weight": (D, VISION // 2),
            "fuse.post_process.bias": (D,),
            "RCA.q_proj_pre.weight": (D, D, 1),
            "RCA.q_proj_pre.bias": (D,),
            **{f"RCA.linear_proj.{i}.weight": (D, VISION) for i in range(LAYERS)},
            "class_mapping.weight": (D, D),
            "class_mapping.bias": (D,),
            "image_mapping.weight": (D, D),
            "image_mapping.bias": (D,),
        }
    )
    return shapes


@pytest.fixture
def reference_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    state = {key: 0.05 * torch.randn(shape, generator=generator) for key, shape in reference_shapes().items()}
    for prefix in ("context", "state"):  # shared modules hold the same tensors under both names
        target = "PFL_context" if prefix == "context" else "PFL_normal"
        for key in list(state):
            if key.startswith(f"{prefix}_encoder."):
                state[f"{target}.encoder.{key.split('.', 1)[1]}"] = state[key]
    return state


def _model(tiny_clip) -> BayesPFLModel:
    return BayesPFLModel(tiny_config(), tiny_clip).eval()


def test_authors_checkpoint_loads(tiny_clip, reference_state, tmp_path):
    path = tmp_path / "train_visa.pth"
    torch.save({"MyModel": reference_state}, path)
    model = _model(tiny_clip)
    clip_before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    load_head_weights(model, str(path))
    assert model.is_trained
    assert model.image_head_stage == 2
    torch.testing.assert_close(model.prompts.state_abnormal, reference_state["prompt_state_abnormal"])
    torch.testing.assert_close(model.pixel_logit_scale, reference_state["temperature_pixel"])
    torch.testing.assert_close(
        model.distributions.state_encoder.log_variance[2].weight,
        reference_state["state_encoder.weight_log_variance.module.2.weight"],
    )
    torch.testing.assert_close(model.distributions.abnormal.flow_w, reference_state["PFL_abnormal.amor_w"][0, :, 0])
    torch.testing.assert_close(model.distributions.normal.flow_b, reference_state["PFL_normal.amor_b"].flatten())
    torch.testing.assert_close(model.image_head.patch_pooling.score.bias, reference_state["fuse.compress.bias"])
    text = torch.randn(2, 5, D)
    conv = torch.nn.functional.conv1d(
        text.transpose(1, 2), reference_state["RCA.q_proj_pre.weight"], reference_state["RCA.q_proj_pre.bias"]
    ).transpose(1, 2)
    torch.testing.assert_close(model.rca.query(text), conv)
    for key, value in model.clip.state_dict().items():
        torch.testing.assert_close(value, clip_before[key])
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 64, 64), ["candle"]).pred_score).all()


def test_every_authors_key_is_used_or_known_dead(reference_state):
    converted = convert_reference_state_dict(reference_state)
    dead = [
        k
        for k in reference_state
        if "decoder" in k
        or "p_mu" in k
        or k.startswith(("PFL_context.encoder", "PFL_normal.encoder", "PFL_abnormal.encoder"))
    ]
    assert len(converted) == len(reference_state) - len(dead)


def test_unknown_keys_are_named(reference_state):
    reference_state["extra_head.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match=r"extra_head\.weight"):
        convert_reference_state_dict(reference_state)


def test_shape_mismatch_and_missing_keys_are_named(tiny_clip, reference_state, tmp_path):
    reference_state["prompt_context"] = torch.zeros(3, P, D)
    del reference_state["image_mapping.bias"]
    path = tmp_path / "bad.pth"
    torch.save({"MyModel": reference_state}, path)
    with pytest.raises(
        ValueError, match=r"image_head.image_mapping.bias.*prompts.context: file \(3, 2, 32\) vs model \(2, 2, 32\)"
    ):
        load_head_weights(_model(tiny_clip), str(path))


def test_missing_file(tiny_clip, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        load_head_weights(_model(tiny_clip), str(tmp_path / "nowhere.pth"))


def test_own_head_state_dict_round_trip(tiny_clip, tmp_path):
    source = _model(tiny_clip)
    source.image_head_stage = 2
    path = tmp_path / "head.pt"
    torch.save(source.head_state_dict(), path)
    target = _model(tiny_clip)
    load_head_weights(target, str(path))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target(images, ["a", "b"]).pred_score, source(images, ["a", "b"]).pred_score)
    assert target.image_head_stage == 2
