# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Shared fixtures: a tiny random CLIP, tiny head configurations and synthetic dataset trees. No network."""

import socket
from pathlib import Path

import pytest
import torch

from anomalib_bayes_pfl.data.synthetic import write_tree
from anomalib_bayes_pfl.model import BayesPFLModel, load_clip

from .helpers import TINY_CLIP, tiny_config


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never touch the network: any outgoing connection fails at once.

    Unix-domain sockets stay open: data-loading workers hand tensors to the main process through them.
    """
    connect = socket.socket.connect

    def refuse(*args, **kwargs):
        msg = "network access in tests"
        raise OSError(msg)

    def local_only(sock: socket.socket, address: object) -> None:
        if sock.family != socket.AF_UNIX:
            refuse()
        connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="session")
def tiny_clip_path() -> str:
    return str(TINY_CLIP)


@pytest.fixture(scope="session")
def tiny_clip():
    torch.manual_seed(0)
    return load_clip(str(TINY_CLIP), pretrained=None)


@pytest.fixture
def tiny_model(tiny_clip) -> BayesPFLModel:
    torch.manual_seed(0)
    return BayesPFLModel(tiny_config(), tiny_clip).eval()


@pytest.fixture(scope="session")
def mvtec_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tree(tmp_path_factory.mktemp("mvtec"), ["tile_a", "tile_b", "tile_c"])
