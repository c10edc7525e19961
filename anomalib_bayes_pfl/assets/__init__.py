# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Files shipped with the package: the tiny open_clip config used by the offline demo, the docs and the tests."""

from pathlib import Path

# A 4-block ViT (width 64, patch 8, native 32 px) with a 2-layer text tower whose width equals the joint embedding
# width (32), as Bayes-PFL needs. With random weights it demonstrates the pipeline, not the method's accuracy.
TINY_CLIP_CONFIG = str(Path(__file__).with_name("tiny-clip.json"))
# Short name of that config for ``--model.clip_model``: how anyone without CLIP weights tries the command line.
TINY_CLIP_NAME = "bayes-pfl-tiny"
