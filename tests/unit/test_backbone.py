# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""CLIP loading from every source, and the image taps pinned against open_clip's own forward."""

from pathlib import Path

import pytest
import torch

from anomalib_bayes_pfl.model import backbone
from anomalib_bayes_pfl.model.backbone import (
    _resolve_weights_file,
    encode_image_taps,
    interpolate_positional_embedding,
    load_clip,
    read_clip_state_dict,
)
from anomalib_bayes_pfl.model.config import resolve_tap_layers


def test_global_feature_matches_encode_image(tiny_clip):
    images = torch.randn(2, 3, 32, 32)
    features = encode_image_taps(tiny_clip, images, (1, 2, 3, 4))
    torch.testing.assert_close(features.global_features, tiny_clip.encode_image(images), rtol=0, atol=1e-6)


def test_taps_are_raw_block_outputs_without_cls(tiny_clip):
    images = torch.randn(2, 3, 32, 32)
    captured = []
    hooks = [
        block.register_forward_hook(lambda _m, _i, out: captured.append(out))
        for block in tiny_clip.visual.transformer.resblocks
    ]
    try:
        tiny_clip.encode_image(images)
    finally:
        for hook in hooks:
            hook.remove()
    features = encode_image_taps(tiny_clip, images, (2, 4))
    for tap, block_output in zip(features.patch_tokens, (captured[1], captured[3]), strict=True):
        torch.testing.assert_close(tap, block_output[1:].permute(1, 0, 2))  # LND -> NLD, CLS dropped
        assert tap.shape == (2, 16, 64)


def test_larger_input_interpolates_positions(tiny_clip):
    features = encode_image_taps(tiny_clip, torch.randn(1, 3, 64, 64), (1, 2, 3, 4))
    assert [tuple(t.shape) for t in features.patch_tokens] == [(1, 64, 64)] * 4
    positions = tiny_clip.visual.positional_embedding
    assert torch.equal(interpolate_positional_embedding(positions, 4), positions)
    resized = interpolate_positional_embedding(positions, 8)
    assert resized.shape == (65, 64)
    torch.testing.assert_close(resized[0], positions[0])


@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (1, 4, 64, 64), (1, 3, 64, 48), (3, 64, 64)])
def test_bad_image_shapes_are_named(tiny_clip, shape):
    with pytest.raises(ValueError, match=r"images must be \(N, 3, H, H\)"):
        encode_image_taps(tiny_clip, torch.randn(shape), (1, 2, 3, 4))


def test_image_side_must_fit_patches(tiny_clip):
    with pytest.raises(ValueError, match="multiple of the CLIP patch size 8"):
        encode_image_taps(tiny_clip, torch.randn(1, 3, 60, 60), (1, 2, 3, 4))


def test_clip_is_frozen(tiny_clip):
    assert not any(parameter.requires_grad for parameter in tiny_clip.parameters())
    assert not tiny_clip.training


def test_state_dict_file_round_trip(tiny_clip, tiny_clip_path, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny_clip.state_dict().items()}}, path)
    loaded = load_clip(tiny_clip_path, pretrained=str(path))
    text = torch.randint(0, 49408, (2, 77))
    torch.testing.assert_close(loaded.encode_text(text), tiny_clip.encode_text(text), rtol=0, atol=0)


def test_openai_style_jit_archive_is_read(tiny_clip, tiny_clip_path, tmp_path):
    """OpenAI ships TorchScript archives with metadata keys; they load into exact-GELU towers."""

    class Archive(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = tiny_clip.visual
            self.input_resolution = torch.nn.Parameter(torch.tensor(32), requires_grad=False)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.visual(image)

    path = tmp_path / "ViT-tiny.pt"
    torch.jit.trace(Archive(), torch.randn(1, 3, 32, 32), check_trace=False).save(str(path))
    state = read_clip_state_dict(str(path))
    assert "input_resolution" not in state
    torch.testing.assert_close(state["visual.conv1.weight"], tiny_clip.visual.conv1.weight)


def test_quick_gelu_switch(tiny_clip_path):
    exact = load_clip(tiny_clip_path, pretrained=None)
    quick = load_clip(tiny_clip_path, pretrained=None, quick_gelu=True)
    assert type(exact.visual.transformer.resblocks[0].mlp.gelu).__name__ == "GELU"
    assert type(quick.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"


def test_missing_weights_file_names_the_option(tiny_clip_path):
    with pytest.raises(FileNotFoundError, match=r"weights/ViT-L-14-336px\.pt.*clip_pretrained"):
        load_clip(tiny_clip_path, pretrained="weights/ViT-L-14-336px.pt")


def test_unknown_tag_lists_known_tags_and_random_weights():
    with pytest.raises(ValueError, match=r"tags \[.*'openai'.*clip_pretrained null for random weights"):
        load_clip("ViT-B-16", pretrained="no-such-tag")
    with pytest.raises(ValueError, match=r"Pass the path of a local checkpoint, or --model.clip_pretrained null"):
        load_clip("bayes-pfl-tiny", pretrained="openai")  # a config without tags, by its short name


@pytest.mark.parametrize(
    ("model", "tag", "source"),
    [
        ("ViT-L-14-336", "openai", r"openaipublic\.azureedge\.net/.*/ViT-L-14-336px\.pt"),
        (
            "ViT-B-32",
            "laion2b_s34b_b79k",
            r"huggingface\.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/.*open_clip_pytorch_model\.bin",
        ),
    ],
)
def test_uncached_tag_without_network_fails_fast_with_the_file_to_fetch(tmp_path, monkeypatch, model, tag, source):
    """One connection probe with a short timeout, then the error: no download and its retries are attempted."""
    probes = []

    def unreachable(address, timeout):
        probes.append(timeout)
        message = "no network"
        raise OSError(message)

    def download(*args, **kwargs):
        pytest.fail("a download was attempted although the host did not answer")

    monkeypatch.setattr(backbone.socket, "create_connection", unreachable)
    monkeypatch.setattr(backbone.open_clip, "download_pretrained", download)
    with pytest.raises(RuntimeError, match=rf"cannot be reached\. Download https://{source}.*--model\.clip_pretrained"):
        load_clip(model, pretrained=tag, cache_dir=str(tmp_path))
    assert probes == [backbone.CONNECT_TIMEOUT_S]


def test_cached_tags_resolve_offline(tmp_path):
    """A filled open_clip cache (URL tags) or Hugging Face cache (hub tags) is used without any network."""
    url_file = tmp_path / "ViT-L-14-336px.pt"
    url_file.write_bytes(b"weights")
    assert _resolve_weights_file("ViT-L-14-336", "openai", str(tmp_path)) == str(url_file)
    snapshot = tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("0123abcd")
    weights = snapshot / "snapshots" / "0123abcd" / "open_clip_pytorch_model.bin"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    assert Path(_resolve_weights_file("ViT-B-32", "laion2b_s34b_b79k", str(tmp_path))) == weights


def test_unknown_model_and_missing_config():
    with pytest.raises(ValueError, match="Unknown CLIP model 'ViT-Nope'"):
        load_clip("ViT-Nope", pretrained=None)
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        load_clip("missing.json", pretrained=None)


def test_tap_layers_default_and_range():
    assert resolve_tap_layers(None, 24, "ViT-L-14-336") == (6, 12, 18, 24)
    assert resolve_tap_layers(None, 12, "ViT-B-16") == (3, 6, 9, 12)
    with pytest.raises(ValueError, match=r"has 12 blocks; use 1-based block numbers in 1..12, e.g. \(3, 6, 9, 12\)"):
        resolve_tap_layers((6, 12, 18, 24), 12, "ViT-B-16")


def test_random_weights_are_reproducible_and_leave_the_global_rng(tiny_clip_path):
    torch.manual_seed(5)
    expected_next = torch.rand(1)
    torch.manual_seed(5)
    first = load_clip(tiny_clip_path, pretrained=None)
    assert torch.equal(torch.rand(1), expected_next)
    second = load_clip(tiny_clip_path, pretrained=None)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
