# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""A ``cuda`` device for the ``fake_cuda`` tests: FakeTensorMode's on a machine without a GPU, the real one on demand.

Without a GPU, torch's fake tensors carry shapes, dtypes and devices but no values: an operation that mixes a CPU
tensor with a CUDA one raises ``FakeTensorDeviceMismatchError``, as a GPU raises a device error
(``../shared/design/gpu_without_gpu.md``). With ``BAYES_PFL_REAL_CUDA=1`` the same tests run on the real ``cuda``
device, with no fake mode (``benchmarks/gpu_check.py`` runs them so).

What fake tensors cannot do, and how the tests get around it:

- Read values (``.item()``, ``.tolist()``, ``bool(tensor)``, sorting into thresholds, metrics): such code runs on
  real CPU tensors (:meth:`CudaHarness.on_cpu`), or :meth:`CudaHarness.until_value_read` runs it on fake-CUDA inputs
  up to the read, which must be the first thing to stop it (never a device mismatch before it).
- Backward: the autograd engine asks CUDA for its devices' contexts before it runs any node, and there is no CUDA
  device (``hasPrimaryContext expects a valid device index``). :meth:`CudaHarness.backward` walks the graph instead:
  every gradient it would compute must be on ``cuda``, and each parameter it reaches gets a zero gradient there, so
  that the optimiser's step runs.
- Generators: fake mode accepts a CPU ``torch.Generator`` for a CUDA draw, which a GPU refuses;
  :class:`GeneratorDeviceCheck` refuses it in both modes.
- Moving fake parameters: ``Module.to`` swaps them, and fake tensors hold weak references, so a module built inside
  the mode cannot move (open_clip's ``create_model`` moves its model to the CPU). Modules are built on the CPU and
  moved once, from real tensors (:meth:`CudaHarness.to_cuda`).
- Autocast: ``torch.autocast("cuda")`` turns itself off without a GPU; inside the harness it believes there is one
  (with bf16), so that bf16 runs cast the fake tensors' operations as a GPU would.
- Exporting: ``torch.export`` asks for the NVIDIA driver; the forward that exports trace runs instead.
"""

import contextlib
import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

import pytest
import torch
from anomalib.data import ImageBatch
from torch import nn
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorDeviceMismatchError,
    FakeTensorMode,
    unset_fake_temporarily,
)
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode, ShapeEnv
from torch.overrides import TorchFunctionMode

REAL_CUDA_VARIABLE = "BAYES_PFL_REAL_CUDA"
CUDA = torch.device("cuda", 0)
# What fake tensors raise where the code reads a value.
VALUE_READ_ERRORS = (GuardOnDataDependentSymNode, DataDependentOutputException, DynamicOutputShapeException)

T = TypeVar("T")


class GeneratorDeviceError(RuntimeError):
    """A generator drew a tensor on another device than its own (fake mode would accept it; a GPU refuses it)."""


class GeneratorDeviceCheck(TorchFunctionMode):
    """Refuse any torch call whose ``generator`` is on another device type than what it draws."""

    def __torch_function__(self, func: Callable, types: Sequence[type], args: tuple = (), kwargs: dict | None = None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        generator = kwargs.get("generator")
        drawn = isinstance(generator, torch.Generator) and isinstance(result, torch.Tensor)
        if drawn and generator.device.type != result.device.type:
            msg = f"{func.__name__} drew on device {result.device} with a generator on device {generator.device}"
            raise GeneratorDeviceError(msg)
        return result


def real_cuda_requested() -> bool:
    """Whether ``BAYES_PFL_REAL_CUDA=1`` asks for the real device; it fails the test when there is none."""
    if os.environ.get(REAL_CUDA_VARIABLE, "") != "1":
        return False
    if not torch.cuda.is_available():
        pytest.fail(
            f"{REAL_CUDA_VARIABLE}=1 asks for the real cuda device, but torch.cuda.is_available() is False: run on a "
            f"machine with a GPU, or unset {REAL_CUDA_VARIABLE} to check on FakeTensorMode's cuda device.",
            pytrace=False,
        )
    return True


class CudaHarness:
    """A ``cuda`` device for one test: fake (default) or real (``BAYES_PFL_REAL_CUDA=1``).

    Use it as a context manager around everything that makes or uses CUDA tensors; build modules on the CPU
    first and move them with :meth:`to_cuda` inside it.
    """

    def __init__(self) -> None:
        self.real = real_cuda_requested()
        self.device = CUDA
        self.mode = None if self.real else FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv())

    @contextlib.contextmanager
    def _active(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            if self.mode is not None:
                # anomalib's batch validators wrap tensors in torchvision tv_tensors (Tensor.as_subclass), which a
                # fake tensor cannot become: the wrapping is skipped while the mode is on.
                stack.enter_context(mock.patch.object(torch.Tensor, "as_subclass", lambda tensor, cls: tensor))
                # torch.autocast turns itself off for cuda without a GPU, and asks the GPU whether it has bf16: as
                # on a GPU that has, autocast then casts the fake tensors' operations.
                unavailable = "torch.cuda.amp.common.amp_definitely_not_available"
                stack.enter_context(mock.patch(unavailable, return_value=False))
                stack.enter_context(mock.patch("torch.cuda.is_bf16_supported", return_value=True))
                stack.enter_context(self.mode)
            stack.enter_context(GeneratorDeviceCheck())
            yield

    def __enter__(self) -> "CudaHarness":
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(self._active())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.__exit__(*exc_info)

    def to_cuda(self, module: nn.Module) -> nn.Module:
        """Move ``module`` to ``cuda`` (fake modules need new parameter objects: ``Module.to`` cannot set ``.data``)."""
        overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
        torch.__future__.set_overwrite_module_params_on_conversion(True)
        try:
            return module.to(self.device)
        finally:
            torch.__future__.set_overwrite_module_params_on_conversion(overwrite)

    @staticmethod
    def raises_mismatch() -> contextlib.AbstractContextManager:
        """Expect what a CPU tensor mixed into a CUDA computation raises.

        Fake tensors raise ``FakeTensorDeviceMismatchError`` ("found two different devices") or, in some operators'
        own checks, the ``RuntimeError`` that CUDA raises ("Expected all tensors to be on the same device");
        :class:`GeneratorDeviceError` names both devices too.
        """
        return pytest.raises((FakeTensorDeviceMismatchError, RuntimeError), match="device")

    @contextlib.contextmanager
    def on_cpu(self) -> Iterator[None]:
        """Real CPU tensors within the block, for code that reads values (fake mode suspended)."""
        with unset_fake_temporarily() if self.mode is not None else contextlib.nullcontext():
            yield

    def until_value_read(self, call: Callable[[], T], where: str) -> T | None:
        """Run ``call``; on fake tensors it must stop at its first value read, in the file ``where``.

        Returns what ``call`` returns on the real device, ``None`` on fake tensors. A device mismatch before the
        read fails the test, as any other error does.
        """
        if self.mode is None:
            return call()
        with pytest.raises(VALUE_READ_ERRORS) as stopped:
            call()
        frames = [frame.filename for frame in traceback.extract_tb(stopped.value.__traceback__)]
        # The innermost frame outside torch and this harness (whose generator check sees every torch call).
        code = [name for name in frames if f"{os.sep}torch{os.sep}" not in name and name != __file__]
        assert code, frames
        assert Path(code[-1]).name == where, f"stopped reading a value in {code[-1]}, expected {where}"
        return None

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()`` on the real device; on fake tensors, a walk of the graph that checks every device.

        The walk reads each backward node's input metadata (the device of the gradient it receives): all must be
        ``cuda``. Each parameter it reaches gets a zero gradient on its own device, as the engine would accumulate.
        """
        if self.mode is None:
            loss.backward()
            return
        seen: set[Any] = set()
        pending = [loss.grad_fn]
        while pending:
            node = pending.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            devices = {metadata.device for metadata in node._input_metadata}  # private: torch has no public way
            assert devices <= {self.device}, f"{node.name()} receives gradients on {devices}"
            variable = getattr(node, "variable", None)  # AccumulateGrad: the leaf its gradient lands on
            if variable is not None:
                assert variable.device == self.device, f"a leaf of shape {tuple(variable.shape)} on {variable.device}"
                variable.grad = torch.zeros_like(variable)
            pending.extend(next_node for next_node, _ in node.next_functions)

    def image_batch(self, size: int = 2, image_size: int = 64, paths: Sequence[str] | None = None) -> ImageBatch:
        """Random images on ``cuda``, a normal and an anomalous one in turn, with masks (known for each image)."""
        labels = torch.arange(size, device=self.device) % 2
        masks = torch.zeros(size, image_size, image_size, dtype=torch.bool, device=self.device)
        masks[1::2, : image_size // 4, : image_size // 4] = True
        paths = list(paths) if paths is not None else [f"parts/tile_c/test/good/{i:03}.png" for i in range(size)]
        image = torch.rand(size, 3, image_size, image_size, device=self.device)
        return ImageBatch(image=image, gt_label=labels, gt_mask=masks, image_path=paths)

    def assert_on_cuda(self, *tensors: torch.Tensor | None) -> None:
        """Every tensor given (``None`` is not allowed) is on ``cuda``."""
        for tensor in tensors:
            assert isinstance(tensor, torch.Tensor), tensor
            assert tensor.device == self.device, tensor.device
