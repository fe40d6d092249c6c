"""Peak dense bf16 tensor-core FLOP/s by GPU name: the denominator of MFU.

The callback and the benchmarks use it.

Lightning's ``get_available_flops`` finds nothing for the plain name "NVIDIA H200". It knows "h200
sxm1" and "h200 nvl1" only. It also lists the H200 and H100 NVL at their with-sparsity figures. MFU
would thus be missing or halved.

The numbers are NVIDIA's datasheet "BF16 Tensor Core" figures. Those are quoted with 2:4 sparsity,
so they are halved to dense here. H100 SXM: 1,979 -> 989 (PCIe 1,513 -> 756, NVL 1,671 -> 835). H200
SXM: 1,979 -> 989 (NVL 1,671 -> 835). A100: 624 -> 312.
"""

from __future__ import annotations

import torch

# Substrings of torch.cuda.get_device_name, most specific first: the first one found in the name
# wins.
BF16_DENSE_PEAKS = (
    ("H200 NVL", 835e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
)


def bf16_peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak FLOP/s of a CUDA ``device`` in the table above.

    None for other devices and unknown GPUs.
    """
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_DENSE_PEAKS if key in name), None)
