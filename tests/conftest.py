# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Shared fixtures: a tiny random CLIP, tiny head configurations and synthetic dataset trees. No network."""

import os
import socket
from pathlib import Path

# One OpenMP thread per test process (a user's own setting wins): xdist already runs a process per core (and one),
# and a thread per core in each of them oversubscribes the machine (the suite took 853 s with them, 794 s without, on 2
# cores).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from anomalib_bayes_pfl.data.synthetic import write_tree
from anomalib_bayes_pfl.model import BayesPFLModel, load_clip

from .helpers import TINY_CLIP, tiny_config, train_tiny

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # also where torch was imported before this file

# The longest modules, longest first (about 50-180 s each on 2 cores, --durations). xdist hands each worker whole
# modules, so the suite ends when the last one started ends: these start first, then the other slow modules, then the
# quick ones fill the gaps.
LONGEST_MODULES = (
    "test_benchmark.py",
    "test_demo.py",
    "test_few_shot.py",
    "test_deploy.py",
    "test_paper_scale.py",
    "test_engine_contract.py",
    "test_reproducible_cli.py",
    "test_fidelity_mutations.py",
)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """One worker more than cores (``-n auto``): a good part of the suite waits on processes it starts (command-line
    runs, benchmark jobs, fresh interpreters) or on timeouts, and the extra worker fills those gaps. On 2 cores the
    suite took 436 s with 3 workers against 507 s with 2, one run after the other on the same commit."""
    del config
    return (os.cpu_count() or 1) + 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest modules first, then the other slow ones; otherwise in the order collected (the sort is stable)."""

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        if name in LONGEST_MODULES:
            return LONGEST_MODULES.index(name)
        return len(LONGEST_MODULES) + (item.get_closest_marker("slow") is None)

    items.sort(key=rank)


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


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, mvtec_tree) -> tuple:
    """One tiny training run (``helpers.train_tiny``) for the tests that only need a trained model: module, Engine
    results and checkpoint. Tests must not change the module."""
    return train_tiny(tmp_path_factory.mktemp("trained_run"), mvtec_tree)
