"""Streaming, exactly mergeable moments: count, mean, variance, skewness, excess kurtosis.

Accumulators are float64 tensors of central-moment sums M_k = sum (x - mean)^k
per channel. Two partial results merge with the pairwise update of Chan,
Golub & LeVeque (1979), extended to M3 and M4 by Pebay (2008):

    n = na + nb,  d = mean_b - mean_a
    mean = mean_a + d nb / n
    M2 = M2a + M2b + d^2 na nb / n
    M3 = M3a + M3b + d^3 na nb (na - nb) / n^2 + 3 d (na M2b - nb M2a) / n
    M4 = M4a + M4b + d^4 na nb (na^2 - na nb + nb^2) / n^3
         + 6 d^2 (na^2 M2b + nb^2 M2a) / n^2 + 4 d (na M3b - nb M3a) / n

so the result of any split of the data into batches (or processes) equals one
pass over all of it, up to float64 rounding.

A batch is reduced about a centre c close to its mean (power sums S_k of
e = x - c), then converted to central sums, which keeps float32 batches
accurate: per-batch power sums use the activation's dtype (float32 for half
and float32 inputs, float64 for float64) in chunks of at most 256 rows whose
partial sums are added in float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_CHUNK = 256  # rows summed in the working dtype before the float64 add


def _colsum64(t: torch.Tensor) -> torch.Tensor:
    """Sum over dim 0 of (n, d) -> (d,) float64, float32 partial sums over <= 256 rows."""
    n = t.shape[0]
    if t.dtype == torch.float64 or n <= _CHUNK:
        return t.sum(0, dtype=torch.float64) if t.dtype == torch.float64 else t.sum(0).double()
    full = (n // _CHUNK) * _CHUNK
    out = t[:full].reshape(n // _CHUNK, _CHUNK, *t.shape[1:]).sum(1).double().sum(0)  # (d,)
    if full < n:
        out = out + t[full:].sum(0).double()
    return out


@dataclass
class PowerSums:
    """Running power sums S_k = sum (x - c)^k, k = 1..4, per channel about a fixed centre c.

    Adding a batch costs four column sums; :meth:`to_moments` converts to
    central sums once (the formulas in the module docstring's last paragraph):
    mean = c + S1/n, M2 = S2 - S1^2/n, M3 = S3 - 3 S1 S2/n + 2 S1^3/n^2,
    M4 = S4 - 4 S1 S3/n + 6 S1^2 S2/n^2 - 3 S1^4/n^3. The centre is taken
    close to the mean of the first batch, which keeps float32 sums accurate.
    """

    centre: torch.Tensor  # (d,) float64, exactly representable in the working dtype
    count: torch.Tensor
    s1: torch.Tensor
    s2: torch.Tensor
    s3: torch.Tensor
    s4: torch.Tensor

    @classmethod
    def start_at(cls, centre: torch.Tensor) -> "PowerSums":
        z = torch.zeros_like(centre, dtype=torch.float64)
        return cls(centre.double(), z, z.clone(), z.clone(), z.clone(), z.clone())

    @classmethod
    def start(cls, x: torch.Tensor) -> "PowerSums":
        """Empty sums centred on the mean of the first (up to 64) rows of ``x`` (n, d)."""
        return cls.start_at(x[:64].mean(0))

    def add_deviations(self, e: torch.Tensor, count: torch.Tensor | None = None,
                       scratch: torch.Tensor | None = None) -> None:
        """Add rows ``e`` = x - centre (n, d) in the working dtype; ``count`` per channel (default n).

        ``e`` may live on another device than the sums (a GPU): the column sums are
        computed there and only they are moved. ``scratch``: an optional tensor
        shaped like ``e`` reused for the powers (no allocation).
        """
        home = self.s1.device
        self.count += float(e.shape[0]) if count is None else count.to(home)
        self.s1 += _colsum64(e).to(home)
        power = torch.mul(e, e, out=scratch)  # e^2, then e^3, then e^4, in place
        self.s2 += _colsum64(power).to(home)
        self.s3 += _colsum64(power.mul_(e)).to(home)
        self.s4 += _colsum64(power.mul_(e)).to(home)

    def add_sums(self, count, s1, s2, s3, s4) -> "PowerSums":
        """Add counts and power sums taken about this centre, in place; returns self."""
        self.count.add_(count)
        for total, part in ((self.s1, s1), (self.s2, s2), (self.s3, s3), (self.s4, s4)):
            total.add_(part)
        return self

    def add_(self, other: "PowerSums") -> "PowerSums":
        """In-place :meth:`add`: ``other``'s sums (about the same centre) added into these; returns self."""
        if other.centre is not self.centre and not torch.equal(self.centre, other.centre):
            raise ValueError("power sums about different centres cannot be added; use Moments.merge")
        return self.add_sums(other.count, other.s1, other.s2, other.s3, other.s4)

    def add(self, other: "PowerSums") -> "PowerSums":
        """Sum of two accumulations about the same centre (a new object)."""
        if not torch.equal(self.centre, other.centre):
            raise ValueError("power sums about different centres cannot be added; use Moments.merge")
        return PowerSums(self.centre, self.count + other.count, self.s1 + other.s1, self.s2 + other.s2,
                         self.s3 + other.s3, self.s4 + other.s4)

    def to_moments(self) -> "Moments":
        s1, s2, s3, s4, count = self.s1, self.s2, self.s3, self.s4, self.count
        n = count.clamp_min(1)
        mean = self.centre + s1 / n
        m2 = s2 - s1 * s1 / n
        m3 = s3 - 3 * s1 * s2 / n + 2 * s1**3 / n**2
        m4 = s4 - 4 * s1 * s3 / n + 6 * s1**2 * s2 / n**2 - 3 * s1**4 / n**3
        zero = count == 0
        mean, m2, m3, m4 = (torch.where(zero, 0.0, t) for t in (mean, m2, m3, m4))
        return Moments(count.clone(), mean, m2.clamp_min(0), m3, m4.clamp_min(0))


@dataclass
class Moments:
    """Per-channel central-moment sums (float64); shape () for a pooled scalar.

    Use :meth:`from_batch` and :meth:`merge`; read ``mean``, :meth:`variance`,
    :meth:`skewness`, :meth:`excess_kurtosis`.

    >>> m = Moments.from_batch(torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=torch.float64))
    >>> float(m.mean[0]), float(m.variance()[0])
    (2.5, 1.25)
    """

    count: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor
    m3: torch.Tensor
    m4: torch.Tensor

    @classmethod
    def empty(cls, shape: tuple[int, ...] = ()) -> "Moments":
        z = torch.zeros(shape, dtype=torch.float64)
        return cls(z.clone(), z.clone(), z.clone(), z.clone(), z.clone())

    @classmethod
    def from_batch(
        cls, x: torch.Tensor, valid: torch.Tensor | None = None
    ) -> "Moments":
        """Moments of each column of ``x`` (n, d) (or of a 1-D ``x``, shape ()).

        ``valid`` (same shape, bool) excludes entries (non-finite ones): they
        add nothing to any sum and are not counted.
        """
        squeeze = x.dim() == 1
        if squeeze:
            x = x[:, None]
            valid = None if valid is None else valid[:, None]
        if x.dim() != 2:
            raise ValueError(f"expected a (n, d) or (n,) tensor, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"expected a floating-point tensor, got {x.dtype}")
        x = x.detach()
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        n_rows, d = x.shape
        if n_rows == 0:
            out = cls.empty((d,))
        elif valid is None:
            sums = PowerSums.start(x)
            sums.add_deviations(x - sums.centre.to(x.dtype))
            out = sums.to_moments()
        else:
            count = valid.sum(0).double()
            xz = torch.where(valid, x, torch.zeros((), dtype=x.dtype))
            sums = PowerSums.start_at((xz.sum(0) / count.clamp_min(1).to(x.dtype)).double())
            e = torch.where(valid, x - sums.centre.to(x.dtype), torch.zeros((), dtype=x.dtype))
            sums.add_deviations(e, count)
            out = sums.to_moments()
        return out.pooled() if squeeze else out

    def merge(self, other: "Moments") -> "Moments":
        """Chan/Pebay exact pairwise merge (see the module docstring)."""
        if self.count.shape != other.count.shape:
            raise ValueError(
                f"cannot merge moments of shape {tuple(self.count.shape)} and {tuple(other.count.shape)}"
            )
        na, nb = self.count, other.count
        n = na + nb
        safe = n.clamp_min(1)
        d = other.mean - self.mean
        mean = self.mean + d * nb / safe
        m2 = self.m2 + other.m2 + d**2 * na * nb / safe
        m3 = (
            self.m3 + other.m3
            + d**3 * na * nb * (na - nb) / safe**2
            + 3 * d * (na * other.m2 - nb * self.m2) / safe
        )
        m4 = (
            self.m4 + other.m4
            + d**4 * na * nb * (na**2 - na * nb + nb**2) / safe**3
            + 6 * d**2 * (na**2 * other.m2 + nb**2 * self.m2) / safe**2
            + 4 * d * (na * other.m3 - nb * self.m3) / safe
        )
        return Moments(n, mean, m2, m3, m4)

    def pooled(self) -> "Moments":
        """Moments of all entries together (shape ()), by shifting each channel to the pooled mean."""
        if self.count.dim() == 0:
            return self
        n = self.count.sum()
        mean = (self.count * self.mean).sum() / n.clamp_min(1)
        d = self.mean - mean  # (d,)
        c = self.count
        m2 = (self.m2 + c * d**2).sum()
        m3 = (self.m3 + 3 * d * self.m2 + c * d**3).sum()
        m4 = (self.m4 + 4 * d * self.m3 + 6 * d**2 * self.m2 + c * d**4).sum()
        return Moments(n, mean, m2, m3, m4)

    def variance(self) -> torch.Tensor:
        """Population variance M2 / n (NaN where n = 0)."""
        return torch.where(self.count > 0, self.m2 / self.count.clamp_min(1), float("nan"))

    def skewness(self) -> torch.Tensor:
        """sqrt(n) M3 / M2^1.5 (NaN where undefined)."""
        ok = (self.count > 0) & (self.m2 > 0)
        return torch.where(ok, self.count.sqrt() * self.m3 / self.m2.clamp_min(1e-300) ** 1.5, float("nan"))

    def excess_kurtosis(self) -> torch.Tensor:
        """n M4 / M2^2 - 3 (0 for a normal distribution; NaN where undefined)."""
        ok = (self.count > 0) & (self.m2 > 0)
        return torch.where(ok, self.count * self.m4 / self.m2.clamp_min(1e-300) ** 2 - 3, float("nan"))

    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {f"{prefix}{k}": getattr(self, k).numpy() for k in ("count", "mean", "m2", "m3", "m4")}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str = "") -> "Moments":
        return cls(*(torch.as_tensor(np.asarray(arrays[f"{prefix}{k}"]), dtype=torch.float64)
                     for k in ("count", "mean", "m2", "m3", "m4")))
