"""Corpora as token streams: embedded, local file, or `datasets`; bytes or a model's tokenizer.

The embedded corpus is the source of a fixed list of modules of Python's own
standard library: real English prose (docstrings, comments) mixed with code,
present on every machine that runs normlens, with no download.

Byte tokens (ids 0-255) are the zoo's default and read a file's bytes as they
are. With a Hugging Face tokenizer (``tokenizer=``, or
:func:`corpus_for_model`, which picks the model's own) files are decoded
with an explicit ``encoding`` and the token streams are cached (see
:func:`normlens.data.tokenize.token_cache_dir`).
"""
from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normlens.data.tokenize import (
    BYTE_VOCAB,
    BYTES,
    ByteTokenizer,
    DataError,
    Tokenizer,
    encode_corpus,
    model_tokenizer,
)

# Fixed, ordered list: the corpus is the same on every machine with the same Python.
EMBEDDED_MODULES = (
    "textwrap.py", "difflib.py", "argparse.py", "dataclasses.py", "functools.py",
    "random.py", "statistics.py", "fractions.py", "heapq.py", "shlex.py", "calendar.py",
    "csv.py", "gettext.py", "pprint.py", "queue.py", "sched.py", "tempfile.py",
    "threading.py", "contextlib.py", "copy.py", "json/decoder.py", "json/encoder.py",
    "collections/__init__.py", "enum.py", "inspect.py", "typing.py", "doctest.py",
    "unittest/case.py", "logging/__init__.py", "zipfile.py", "locale.py", "ipaddress.py",
)


@dataclass(frozen=True)
class TokenSplits:
    """A corpus as 1-D int64 token streams, split into train and validation.

    ``name`` says where it came from; ``vocab_size`` bounds every token id;
    ``tokenizer`` is the identity of the tokenizer that made the ids ("bytes"
    or "hf:<digest>"); ``n_replaced`` counts the bytes that decoding for a
    text tokenizer had to replace.
    """

    name: str
    train: torch.Tensor  # (n_train_tokens,)
    val: torch.Tensor  # (n_val_tokens,)
    vocab_size: int = BYTE_VOCAB
    tokenizer: str = BYTES
    n_replaced: int = 0


def encode_bytes(data: str | bytes) -> torch.Tensor:
    """Bytes (or the UTF-8 bytes of a string) as token ids in [0, 256)."""
    raw = data if isinstance(data, bytes) else data.encode("utf-8")
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).astype(np.int64))


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
    block: int = 2048, min_tokens: int = 256, vocab_size: int = BYTE_VOCAB, tokenizer: str = BYTES,
    n_replaced: int = 0,
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
    return TokenSplits(name, train.contiguous(), val.contiguous(), vocab_size, tokenizer, n_replaced)


def _split_encoded(name: str, data: bytes | str, *, tokenizer: Tokenizer | None, seed: int,
                   val_fraction: float, encoding: str = "utf-8", errors: str = "replace",
                   cache_dir: str | Path | None = None) -> TokenSplits:
    tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
    encoded = encode_corpus(data, tokenizer, source=name, encoding=encoding, errors=errors,
                            cache_dir=cache_dir)
    return split_tokens(name, encoded.tokens, val_fraction=val_fraction, seed=seed,
                        vocab_size=tokenizer.vocab_size, tokenizer=tokenizer.identity,
                        n_replaced=encoded.n_replaced)


def load_embedded(*, seed: int = 0, val_fraction: float = 0.1, max_bytes: int = 1_500_000,
                  tokenizer: Tokenizer | None = None, cache_dir: str | Path | None = None) -> TokenSplits:
    """The embedded standard-library corpus, split by ``seed``; bytes unless ``tokenizer``."""
    return _split_encoded("embedded:python-stdlib", embedded_text(max_bytes), tokenizer=tokenizer,
                          seed=seed, val_fraction=val_fraction, cache_dir=cache_dir)


def load_text_file(
    path: str | Path, *, seed: int = 0, val_fraction: float = 0.1, tokenizer: Tokenizer | None = None,
    encoding: str = "utf-8", errors: str = "replace", cache_dir: str | Path | None = None,
) -> TokenSplits:
    """A local file. Byte tokens read its bytes as they are (any file works);
    a text ``tokenizer`` gets it decoded with ``encoding`` (``errors``: "replace"
    warns with the count of replaced bytes, "strict" refuses them)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset path {str(path)!r} does not exist; pass an existing text file")
    if path.is_dir():
        raise DataError(f"dataset path {str(path)!r} is a folder; pass one text file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read dataset file {str(path)!r} ({error.strerror}); check its "
                        "permissions") from None
    if not data.strip():
        raise DataError(f"dataset file {str(path)!r} is empty; pass a file with text in it")
    return _split_encoded(f"file:{path.name}", data, tokenizer=tokenizer, seed=seed,
                          val_fraction=val_fraction, encoding=encoding, errors=errors,
                          cache_dir=cache_dir)


def load_hf_dataset(
    name: str, *, split: str = "train", text_field: str = "text", max_bytes: int = 5_000_000,
    config_name: str | None = None, seed: int = 0, val_fraction: float = 0.1,
    tokenizer: Tokenizer | None = None, cache_dir: str | Path | None = None,
) -> TokenSplits:
    """A Hugging Face dataset (hub name or local folder) via `datasets`; bytes unless ``tokenizer``.

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
    return _split_encoded(f"hf:{name}", "\n".join(pieces)[:max_bytes], tokenizer=tokenizer, seed=seed,
                          val_fraction=val_fraction, cache_dir=cache_dir)


def load_corpus(source: str = "embedded", *, seed: int = 0, **kwargs) -> TokenSplits:
    """Dispatch on ``source``: "embedded", a path to a file, or "hf:NAME".

    Keyword arguments go to the loader (``tokenizer``, ``encoding``, ``cache_dir``, ...).
    """
    if source == "embedded":
        return load_embedded(seed=seed, **kwargs)
    if source.startswith("hf:"):
        return load_hf_dataset(source[3:], seed=seed, **kwargs)
    return load_text_file(source, seed=seed, **kwargs)


def corpus_for_model(model: Any, source: str = "embedded", *, seed: int = 0, **kwargs) -> TokenSplits:
    """``source`` tokenized the way ``model`` reads: bytes for a zoo model, its own
    tokenizer for a Hugging Face model (:func:`model_tokenizer`), checked by
    :func:`check_vocabulary`."""
    tokenizer = model_tokenizer(model)
    splits = load_corpus(source, seed=seed, tokenizer=tokenizer, **kwargs)
    check_vocabulary(model, splits)
    return splits


def check_vocabulary(model: Any, splits: TokenSplits) -> None:
    """Refuse (DataError) token ids the model cannot read or a tokenizer it does not use.

    Ids must lie below the model's ``d_vocab``; a model with its own tokenizer
    (a Hugging Face model) must get ids from that tokenizer, never bytes.
    Nothing is remapped.
    """
    d_vocab = int(model.cfg.d_vocab)
    if getattr(model, "normlens_config", None) is None:
        expected = model_tokenizer(model)
        if splits.tokenizer != expected.identity:
            made_by = "bytes" if splits.tokenizer == BYTES else f"another tokenizer ({splits.tokenizer})"
            raise DataError(
                f"the corpus {splits.name!r} was tokenized as {made_by}, but the model reads "
                f"{expected.name!r}'s tokenizer; load it with corpus_for_model(model, ...) or "
                "load_corpus(..., tokenizer=model_tokenizer(model))")
    top = max(int(splits.train.max()), int(splits.val.max())) if splits.train.numel() else -1
    if top >= d_vocab:
        raise DataError(
            f"the corpus {splits.name!r} has token ids up to {top} but the model's vocabulary has "
            f"{d_vocab} entries; use the model's tokenizer, or build the model with d_vocab >= "
            f"{splits.vocab_size}")


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
