"""Device math helpers that run both compiled and under the Triton interpreter (no libdevice)."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def tanh(z):
    """tanh from exp, accurate to a few fp32 ulps everywhere.

    |z| < 0.25: odd Taylor series to z¹¹ (truncation < 3e-10 relative);
    otherwise (1 - e) / (1 + e) with e = exp(-2|z|), which saturates to ±1
    without overflow. libdevice's tanh is avoided: the interpreter lacks it.
    """
    a = tl.abs(z)
    e = tl.exp(-2.0 * a)
    far = (1.0 - e) / (1.0 + e)
    is_near = a < 0.25
    a = tl.minimum(a, 0.25)  # the series is used only below 0.25; keep it finite elsewhere
    a2 = a * a
    # Horner form of a·(1 - a²/3 + 2a⁴/15 - 17a⁶/315 + 62a⁸/2835 - 1382a¹⁰/155925)
    poly = -0.008863235529902197
    poly = poly * a2 + 0.021869488536155203
    poly = poly * a2 - 0.05396825396825397
    poly = poly * a2 + 0.13333333333333333
    poly = poly * a2 - 0.3333333333333333
    near = a * (poly * a2 + 1.0)
    t = tl.where(is_near, near, far)
    return tl.where(z < 0.0, -t, t)
