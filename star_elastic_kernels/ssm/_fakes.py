"""Fake (meta) impls of the SSM family's private ``_C`` ops (schemas in csrc/ssm/bindings.cpp).

Each of these ops only writes preallocated outputs in place and returns nothing, so its fake impl
has nothing to compute: it lets a launcher (``ssm/scan.py::_cuda`` and the like) run under
``FakeTensorMode`` / ``torch.compile`` tracing, which proves the launcher's own Python reads no
device value on the host.
"""

from __future__ import annotations

import torch

from star_elastic_kernels import _extension

PRIVATE_OPS = ("_ssd_state_update", "_causal_conv1d", "_causal_conv1d_update", "_gated_rmsnorm",
               "_ssd_scan")

_registered: set[str] = set()


def _writes_in_place(*args, **kwargs) -> None:
    return None


def register() -> list[str]:
    """Register the fake impl of every private SSM op defined in this process (by ``_C``, or by
    a test standing in for it) that has none yet; returns the names registered now."""
    _extension.unavailable_reason()  # load _C first, if it is there
    added = []
    for name in PRIVATE_OPS:
        if name in _registered or not hasattr(torch.ops.star_elastic, name):
            continue
        torch.library.register_fake(f"star_elastic::{name}", _writes_in_place)
        _registered.add(name)
        added.append(name)
    return added
