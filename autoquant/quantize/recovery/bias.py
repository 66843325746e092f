"""Bias correction (Nagel et al. 2019; NNCF's fast bias correction): quantized weights — and a quantized input —
shift the mean of each output channel, and every later layer sees that shift. Measured on calibration rows, the
shift E[y_fp32 − y_quantized] per output channel is added to the layer's bias, which then cancels it on average.
It matters most where a channel has few weights (depthwise convolutions), whose rounding errors do not average
out within the channel."""

from __future__ import annotations

import numpy as np


def output_shift(mean_rows: np.ndarray, mean_quantized_rows: np.ndarray, w_matrix: np.ndarray,
                 w_quantized: np.ndarray) -> np.ndarray:
    """Per output channel (groups × outputs per group, in the layer's channel order), the mean of the FP32 output
    minus the quantized one over the rows: `mean_rows` and `mean_quantized_rows` are the means over the rows of the
    FP32 and the quantized input ([groups, inputs]: the outputs are linear in the rows, so their means are the
    outputs of these), `w_matrix` and `w_quantized` the FP32 and quantized weights ([groups, outputs, inputs])."""
    fp32 = np.einsum("gk,gok->go", mean_rows, w_matrix)
    quant = np.einsum("gk,gok->go", mean_quantized_rows, w_quantized)
    return (fp32 - quant).reshape(-1).astype(np.float32)
