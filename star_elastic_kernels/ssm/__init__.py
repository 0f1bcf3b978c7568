"""Width-sliced Mamba-2 ops (DESIGN §3.1): the chunked SSD scan, the decode state update, the causal
depthwise conv1d (+ decode update) and the gated group RMSNorm."""

from star_elastic_kernels.ssm import _fakes
from star_elastic_kernels.ssm._device_checks import check_device_errors
from star_elastic_kernels.ssm.conv import causal_conv1d, causal_conv1d_update
from star_elastic_kernels.ssm.decode import ssd_state_update
from star_elastic_kernels.ssm.norm import gated_rmsnorm
from star_elastic_kernels.ssm.scan import ssd_scan

_fakes.register()

__all__ = ["causal_conv1d", "causal_conv1d_update", "check_device_errors", "gated_rmsnorm",
           "ssd_scan", "ssd_state_update"]
