"""Text corpora as byte-level token streams: embedded, local file, or `datasets`.

The embedded corpus is the source of a fixed list of modules of Python's own
standard library: real English prose (docstrings, comments) mixed with code,
present on every machine that runs normlens, with no download.
"""
from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

BYTE_VOCAB = 256

# Fixed, ordered list: the corpus is the same on every machine with the same Python.
EMBEDDED_MODULES = (
    "textwrap.py", "difflib.py", "argparse.py", "dataclasses.py", "functools.py",
    "random.py", "statistics.py", "fractions.py", "heapq.py", "shlex.py", "calendar.py",
    "csv.py", "gettext.py", "pprint.py", "queue.py", "sched.py", "tempfile.py",
    "threading.py", "contextlib.py", "copy.py", "json/decoder.py", "json/encoder.py",
    "collections/__init__.py", "enum.py", "inspect.py", "typing.py", "doctest.py",
    "unittest/case.py", "logging/__init__.py", "zipfile.py", "locale.py", "ipaddress.py",
)


class DataError(ValueError):
    """Data that cannot be used; the message names the fix."""


@dataclass(frozen=True)
class TokenSplits:
    """A corpus as 1-D int64 token streams, split into train and validation.

    ``name`` says where it came from; ``vocab_size`` bounds every token id.
    """

    name: str
    train: torch.Tensor  # (n_train_tokens,)
    val: torch.Tensor  # (n_val_tokens,)
    vocab_size: int = BYTE_VOCAB


def encode_bytes(text: str) -> torch.Tensor:
    """UTF-8 bytes as token ids in [0, 256)."""
    return torch.from_numpy(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64))


def decode_bytes(tokens: torch.Tensor) -> str:
    return bytes(tokens.to(torch.uint8).tolist()).decode("utf-8", errors="replace")


def embedded_text(max_bytes: int = 1_500_000) -> str:
    """The embedded corpus: standard-library sources in :data:`EMBEDDED_MODULES` order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts: list[str] = []
    total = 0
    for module in EMBEDDED_MODULES:
        path = stdlib / module
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
        if total >= max_bytes:
            break
    if not parts:
        raise DataError(
            f"no standard-library sources found under {stdlib}; pass a text file with "
            "--data PATH instead of the embedded corpus"
        )
    return "\n\n".join(parts)[:max_bytes]


def split_tokens(
    name: str, tokens: torch.Tensor, *, val_fraction: float = 0.1, seed: int = 0,
    block: int = 2048, min_tokens: int = 256,
) -> TokenSplits:
    """Split a 1-D stream into train/val by whole blocks, chosen by ``seed``.

    Blocks of ``block`` tokens are shuffled with a seeded generator and the
    first ``val_fraction`` of them (at least one) become validation.
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if tokens.numel() < min_tokens:
        raise DataError(
            f"corpus {name!r} has {tokens.numel()} tokens; at least {min_tokens} are needed "
            "(two windows of the context length). Use a longer text or a smaller --n-ctx"
        )
    block = max(1, min(block, tokens.numel() // 4))
    n_blocks = tokens.numel() // block
    blocks = tokens[: n_blocks * block].view(n_blocks, block)
    order = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(n_blocks * val_fraction)))
    val = blocks[order[:n_val].sort().values].reshape(-1)
    train = blocks[order[n_val:].sort().values].reshape(-1)
    return TokenSplits(name, train.contiguous(), val.contiguous())


def load_embedded(*, seed: int = 0, val_fraction: float = 0.1, max_bytes: int = 1_500_000) -> TokenSplits:
    """The embedded standard-library corpus, byte-level, split by ``seed``."""
    return split_tokens("embedded:python-stdlib", encode_bytes(embedded_text(max_bytes)),
                        val_fraction=val_fraction, seed=seed)


def load_text_file(path: str | Path, *, seed: int = 0, val_fraction: float = 0.1) -> TokenSplits:
    """A local UTF-8 text file, byte-level."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset path {str(path)!r} does not exist; pass an existing text file")
    if path.is_dir():
        raise DataError(f"dataset path {str(path)!r} is a folder; pass one text file")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise DataError(f"dataset file {str(path)!r} is empty; pass a file with text in it")
    return split_tokens(f"file:{path.name}", encode_bytes(text), val_fraction=val_fraction, seed=seed)


def load_hf_dataset(
    name: str, *, split: str = "train", text_field: str = "text", max_bytes: int = 5_000_000,
    config_name: str | None = None, seed: int = 0, val_fraction: float = 0.1,
) -> TokenSplits:
    """A Hugging Face dataset (hub name or local folder) via `datasets`, byte-level.

    Rows are read in order until ``max_bytes`` of ``text_field`` are collected.
    Needs network access for hub names; local folders and files work offline.
    """
    import datasets

    try:
        dataset = datasets.load_dataset(name, config_name, split=split, streaming=True)
    except Exception as error:  # the datasets library raises many types
        raise DataError(
            f"could not load dataset {name!r} (split {split!r}): {error}. Check the name and "
            "your network, or pass a local text file with --data PATH"
        ) from None
    pieces, total = [], 0
    for row in dataset:
        if text_field not in row:
            raise DataError(
                f"dataset {name!r} has no field {text_field!r}; its fields are {sorted(row)}. "
                "Pass --text-field NAME"
            )
        pieces.append(str(row[text_field]))
        total += len(pieces[-1])
        if total >= max_bytes:
            break
    return split_tokens(f"hf:{name}", encode_bytes("\n".join(pieces)[:max_bytes]),
                        val_fraction=val_fraction, seed=seed)


def load_corpus(source: str = "embedded", *, seed: int = 0, **kwargs) -> TokenSplits:
    """Dispatch on ``source``: "embedded", a path to a text file, or "hf:NAME"."""
    if source == "embedded":
        return load_embedded(seed=seed, **kwargs)
    if source.startswith("hf:"):
        return load_hf_dataset(source[3:], seed=seed, **kwargs)
    return load_text_file(source, seed=seed, **kwargs)


def token_windows(
    stream: torch.Tensor, *, n_seq: int, n_ctx: int, seed: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``n_seq`` random windows of ``n_ctx`` tokens from a 1-D stream: (n_seq, n_ctx)."""
    if stream.numel() < n_ctx + 1:
        raise DataError(
            f"the token stream has {stream.numel()} tokens, fewer than a window of n_ctx={n_ctx}"
            " plus one; use a longer corpus or a smaller n_ctx"
        )
    generator = generator or torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - n_ctx, (n_seq,), generator=generator)
    offsets = torch.arange(n_ctx)
    return stream[starts[:, None] + offsets[None, :]]  # (n_seq, n_ctx)


def eval_windows(splits: TokenSplits, *, n_seq: int, n_ctx: int, seed: int = 0) -> torch.Tensor:
    """A fixed held-out evaluation batch: (n_seq, n_ctx) windows of the validation split."""
    return token_windows(splits.val, n_seq=n_seq, n_ctx=n_ctx, seed=seed + 1)
