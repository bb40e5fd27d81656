"""Import torchvision on a CPU-only torch whose torchvision wheel was built for CUDA (for `bench_gpu.py --quick`).

PyPI's torchvision wheels link their C++ ops (`torchvision/_C.so`) against torch's CUDA libraries, so next to
a CPU build of torch (the one this project's machines have) `import torchvision` fails with "operator
torchvision::nms does not exist". The GPU machine's image has a matching pair and never comes here. For a
wiring test on the CPU, `import_torchvision` defines the two op schemas torchvision's import needs, implements
`torchvision::nms` on the CPU with the project's numpy NMS (`oid_retinanet.boxes.nms`: greedy, a box goes when
its IoU with a kept box is above the threshold, as torchvision's), and imports torchvision again. Numbers
measured with it are never GPU numbers; the benchmark records which ops it used.
"""

from __future__ import annotations

import sys

SHIM = "python NMS shim (the installed torchvision's C++ ops are built for CUDA; CPU wiring test only)"
_LIBRARIES: list = []  # the torch.library handles must stay alive for the ops to stay registered


def _nms_cpu(dets, scores, iou_threshold: float):
    import torch

    from oid_retinanet.boxes.nms import nms

    if dets.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    keep = nms(dets.detach().double().numpy(), scores.detach().double().numpy(), float(iou_threshold))
    return torch.as_tensor(keep, dtype=torch.int64)


def _install_shim() -> None:
    import torch

    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", _nms_cpu, "CPU")
    _LIBRARIES.append(lib)


def import_torchvision():
    """(torchvision module, which ops it runs: 'C++' or SHIM). The shim only where CUDA is unavailable."""
    import torch

    try:
        import torchvision

        return torchvision, "C++"
    except RuntimeError as exc:
        if torch.cuda.is_available() or "torchvision::" not in str(exc):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _install_shim()
    import torchvision
    import torchvision.extension

    torchvision.extension._has_ops = lambda: True  # its ops check; the NMS the detection models call is here
    return torchvision, SHIM
