"""The lattice's frame-by-frame recursions as one Triton kernel, for CUDA tensors.

:func:`sonus.asr.loss.lattice.rnnt_lattice` runs T steps one after the other, each a few
small ops on (B, W) rows. On a GPU each op is a kernel launch, so the torch loop costs some
ten microseconds of launch a frame whatever the batch: at T = 200 most of the loss' time.
Here one program per utterance walks the T frames itself, the row in registers, the
log-cumulative-sum over the W label positions an associative scan: one launch per direction.

Both loops have the same shape: ``x[t] = logcumsumexp(max(prev, m[t]) + a[t]) + p[t]``,
with ``prev`` the previous frame's row (forward: t-1; ``reverse``: t+1), gathered through
the pruned lattice's window shift when there is one. Triton is imported on first use: it
comes with PyTorch's CUDA builds; a machine without it keeps the torch loop.
"""

from __future__ import annotations

import importlib.util
import os

import torch


def available(device: torch.device) -> bool:
    """Use the kernel for tensors on ``device``? A CUDA GPU that Triton supports (compute
    capability 7.0 on) with Triton importable, unless ``SONUS_TRITON=0``."""
    if device.type != "cuda" or os.environ.get("SONUS_TRITON", "1") == "0":
        return False
    return torch.cuda.get_device_capability(device) >= (7, 0) and importlib.util.find_spec("triton") is not None


def scan_frames(
    add: torch.Tensor,
    post: torch.Tensor,
    src: torch.Tensor | None,
    maximum: torch.Tensor | None = None,
    reverse: bool = False,
) -> torch.Tensor:
    """:func:`sonus.asr.loss.lattice.scan_frames` (the same arguments and result) as one
    kernel launch, for fp64 CUDA tensors."""
    B, T, W = add.shape
    out = torch.empty_like(add)
    if B == 0 or T == 0 or W == 0:
        return out
    import triton

    from sonus.asr.loss._lattice_kernel import frames

    if add.dtype != torch.float64:
        raise TypeError(f"scan_frames runs in fp64, got {add.dtype}")
    add, post = add.contiguous(), post.contiguous()
    max_arg = maximum.contiguous() if maximum is not None else add  # unread without HAS_MAX
    src_arg = src.contiguous() if src is not None else add  # unread without HAS_SRC
    block = max(16, triton.next_power_of_2(W))
    with torch.cuda.device(add.device):  # Triton launches on the current device
        frames[(B,)](
            add, post, max_arg, src_arg, out, T, W,
            HAS_MAX=maximum is not None, HAS_SRC=src is not None, REVERSE=reverse, BLOCK=block,
            num_warps=max(1, min(8, block // 128)),
        )  # fmt: skip
    return out
