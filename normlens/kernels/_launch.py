"""Host-side helpers shared by the launchers: input checks, 2-D views, block sizes.

Everything that would break under the Triton interpreter (asking the GPU for
its SM count) sits behind :func:`normlens.kernels.config.interpreting`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from normlens.kernels.config import interpreting

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Widest row held in registers in one pass (forward / backward: the backward
# keeps about twice as many values per element live); wider rows loop over
# column chunks of CHUNK_N (the forward reads such a row twice).
# (Checked by compiling for sm_90 without a GPU: the forward holds 32 K features
# in 64 registers/thread at 32 warps; the backward spills above 8 K.)
MAX_ONE_PASS_N = 32768
MAX_ONE_PASS_N_BWD = 8192
CHUNK_N = 4096
_INTERPRETER_CHUNK_N = 16384  # fewer, larger chunks: the interpreter pays per op
# Elements one interpreted program handles at most: the interpreter pays per
# program, so it gets few, large tiles; a GPU gets ~4 K elements per program.
_INTERPRETER_TILE = 1 << 16
_GPU_TILE = 4096


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (and >= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def default_chunk() -> int:
    """Column chunk for rows wider than one block: CHUNK_N on a GPU, larger when interpreted."""
    return _INTERPRETER_CHUNK_N if interpreting() else CHUNK_N


def tile_elements() -> int:
    """Elements per program for elementwise tiles (large when interpreted, ~4 K on a GPU)."""
    return _INTERPRETER_TILE if interpreting() else _GPU_TILE


def n_programs_hint(device: torch.device) -> int:
    """Programs that fill the device: 4 x SMs on a GPU, a handful when interpreted."""
    if interpreting() or device.type != "cuda":
        return 4
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


def num_warps_for(elements: int) -> int:
    """Warps for a tile of ``elements`` values (about 8-16 values per thread)."""
    if elements >= 32768:
        return 32
    if elements >= 8192:
        return 16
    if elements >= 2048:
        return 8
    return 4


def num_warps_bwd(elements: int) -> int:
    """Warps for a backward tile: about twice the live values per element of the forward."""
    if elements >= 8192:
        return 32
    if elements >= 2048:
        return 16
    return 8


def check_rows_input(name: str, x: torch.Tensor) -> None:
    """Raise a readable error unless ``x`` is a float tensor of a supported dtype, (..., features)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError(f"{name} must have at least one dimension (..., features), got a scalar")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{name} has dtype {x.dtype}; the fused kernels take float32, bfloat16 or float16"
        )


def check_runnable(x: torch.Tensor) -> None:
    """Raise a readable error when the kernels cannot run on ``x``'s device.

    Compiled kernels need CUDA tensors; CPU tensors run only under the Triton
    interpreter (``TRITON_INTERPRET=1`` set before normlens.kernels is imported).
    """
    if x.device.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"the fused kernels run on CUDA tensors, got one on {x.device}; to run them on "
            "CPU set TRITON_INTERPRET=1 before importing normlens.kernels (slow, for tests)"
        )


def check_param(
    name: str, p: torch.Tensor | None, width: int, device: torch.device, *, required_by: str | None = None
) -> None:
    """Raise unless ``p`` is None or a (width,) tensor of a supported dtype on ``device``.

    ``required_by``: the name of the function that needs ``p``; None is then an error.
    """
    if p is None:
        if required_by is not None:
            raise ValueError(f"{required_by} needs a {name} of shape ({width},), got None")
        return
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(p).__name__}")
    if p.shape != (width,):
        raise ValueError(
            f"{name} has shape {tuple(p.shape)}, expected ({width},) to match the input's last dim"
        )
    if p.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} has dtype {p.dtype}; expected float32, bfloat16 or float16")
    if p.device != device:
        raise ValueError(f"{name} is on {p.device} but the input is on {device}")


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """View (..., N) as (M, N) without copying when the strides allow it.

    The kernels take a row stride and a column stride, so any 2-D view works
    (transposes, column slices); only N-D inputs whose leading dims do not
    merge are copied by ``reshape``.
    """
    if x.dim() == 2:
        return x
    return x.reshape(-1, x.shape[-1])  # (M, N)


@dataclass(frozen=True)
class RowTiling:
    """How a (M, N) problem is cut into programs.

    ``one_pass``: a row fits one BLOCK_N block; otherwise columns are looped
    in chunks of BLOCK_N. ``block_m`` rows per tile. For the backward,
    ``n_row_groups`` programs along the rows each own ``rows_per_group``
    rows (a multiple of ``block_m``) and write one partial sum of the
    parameter gradients: no atomics, a fixed summation order.
    """

    block_m: int
    block_n: int
    one_pass: bool
    num_warps: int
    n_row_groups: int
    rows_per_group: int

    def n_col_chunks(self, n: int) -> int:
        """Programs along the columns: 1 in one pass, else one per chunk."""
        return 1 if self.one_pass else -(-n // self.block_n)


def row_tiling(
    m: int,
    n: int,
    device: torch.device,
    *,
    max_one_pass: int = MAX_ONE_PASS_N,
    chunk: int | None = None,
    block_m: int | None = None,
    n_row_groups: int | None = None,
    backward: bool = False,
) -> RowTiling:
    """Choose block sizes and the number of row groups for an (m, n) row-wise op.

    ``max_one_pass``, ``chunk``, ``block_m`` and ``n_row_groups`` can be
    forced (tests use them to reach the looped path and several row groups
    with tiny tensors).
    """
    one_pass = n <= max_one_pass
    block_n = next_power_of_2(n) if one_pass else next_power_of_2(chunk or default_chunk())
    if block_m is None:
        block_m = max(1, min(next_power_of_2(m), tile_elements() // block_n)) if one_pass else 1
    block_m = next_power_of_2(block_m)
    n_tiles = max(1, -(-m // block_m))
    groups = n_row_groups
    if groups is None:
        groups = n_programs_hint(device)
        if not one_pass:
            groups //= -(-n // block_n)  # the column chunks also make programs
    groups = max(1, min(groups, n_tiles))
    tiles_per_group = -(-n_tiles // groups)
    groups = -(-n_tiles // tiles_per_group)
    return RowTiling(
        block_m=block_m,
        block_n=block_n,
        one_pass=one_pass,
        num_warps=(num_warps_bwd if backward else num_warps_for)(block_m * block_n),
        n_row_groups=groups,
        rows_per_group=tiles_per_group * block_m,
    )
