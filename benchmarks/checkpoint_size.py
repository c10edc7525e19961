# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Head size and head-only checkpoint size of a BayesPFL configuration (default: the paper's ViT-L-14-336).

Builds the model with random CLIP weights (no download; sizes do not depend on weight values) and prints JSON
lines: the head parameter count; the Lightning checkpoint without optimiser state (what zero-shot use and
``--model.prompt_weights`` need); and the checkpoints ``anomalib train`` writes so that interrupted training can
resume, with both Adam optimisers' state during stage 1 and with the classifier's alone in stage 2 (the final one).

    python benchmarks/checkpoint_size.py
"""

import json
import tempfile
from pathlib import Path

import torch
from jsonargparse import CLI
from lightning.pytorch import Trainer
from torch.optim import Adam

from anomalib_bayes_pfl import BayesPFL


def main(clip_model: str = "ViT-L-14-336", image_size: int = 518) -> None:
    """Print the head parameter count and the checkpoint sizes in MB."""
    module = BayesPFL(clip_model=clip_model, clip_pretrained=None, image_size=image_size)
    head = sum(p.numel() for name, p in module.model.named_parameters() if not name.startswith("clip."))
    clip = sum(p.numel() for p in module.model.clip.parameters())
    print(json.dumps({"figure": "head_parameters", "value": head, "frozen_clip_parameters": clip}))
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(logger=False, enable_checkpointing=False, max_epochs=1, accelerator="cpu")
        trainer.strategy.connect(module)
        trainer.strategy._lightning_module = module  # save without fitting
        weights_only = Path(folder) / "weights_only.ckpt"
        trainer.save_checkpoint(weights_only, weights_only=True)
        with_optimisers = Path(folder) / "with_optimisers.ckpt"
        groups = module.model.parameter_groups()
        optimisers = [
            Adam(groups["prompts"] + groups["temperatures"] + groups["flows"] + groups["other"]),
            Adam(groups["classifier"]),
        ]
        for optimiser in optimisers:
            for group in optimiser.param_groups:
                for parameter in group["params"]:
                    parameter.grad = torch.zeros_like(parameter)
            optimiser.step()
        checkpoint = torch.load(weights_only, weights_only=False)
        checkpoint["optimizer_states"] = [optimiser.state_dict() for optimiser in optimisers]
        torch.save(checkpoint, with_optimisers)
        optimisers[0].state.clear()  # what BayesPFL does when stage 2 starts
        final = Path(folder) / "final.ckpt"
        checkpoint["optimizer_states"] = [optimiser.state_dict() for optimiser in optimisers]
        torch.save(checkpoint, final)
        figures = (
            ("checkpoint_without_optimiser_state", weights_only),
            ("checkpoint_during_stage_one", with_optimisers),
            ("checkpoint_during_stage_two_and_final", final),
        )
        for name, path in figures:
            print(json.dumps({"figure": name, "value": round(path.stat().st_size / 1e6, 1), "unit": "MB"}))


if __name__ == "__main__":
    CLI(main)
