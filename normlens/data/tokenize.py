"""Tokenizers for corpora: bytes (the zoo's default) or a model's own Hugging Face tokenizer.

A :class:`ByteTokenizer` reads bytes as they are (ids 0-255), so a binary or
non-UTF-8 corpus keeps every byte. A :class:`HFTokenizer` wraps a
``transformers`` tokenizer; text reaches it decoded explicitly
(:func:`decode_text`: an ``encoding``, and a warning that counts any bytes
that had to be replaced). Tokenized corpora are cached on disk, keyed by the
tokenizer's identity and the corpus content (:func:`token_cache_dir`).
"""
from __future__ import annotations

import codecs
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normlens.io import read_npz, write_npz

BYTE_VOCAB = 256
BYTES = "bytes"  # the identity of the byte-level tokenizer


class DataError(ValueError):
    """Data that cannot be used; the message names the fix."""


class ByteTokenizer:
    """Bytes as token ids in [0, 256): no decoding, nothing replaced."""

    name = BYTES
    identity = BYTES
    vocab_size = BYTE_VOCAB

    def encode_bytes(self, data: bytes) -> torch.Tensor:
        return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).astype(np.int64))

    def encode(self, text: str) -> torch.Tensor:
        return self.encode_bytes(text.encode("utf-8"))

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class HFTokenizer:
    """A Hugging Face tokenizer, named by where it was loaded from.

    ``identity`` is a SHA-256 over the tokenizer's full definition (the
    serialized fast tokenizer, or the vocabulary and class of a slow one),
    so two tokenizers share cached corpora only when they tokenize alike.
    """

    def __init__(self, tokenizer: Any, name: str):
        self.tokenizer = tokenizer
        self.name = name
        self.vocab_size = len(tokenizer)
        self.identity = f"hf:{_tokenizer_digest(tokenizer)}"

    def encode(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.int64)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r}, vocab_size={self.vocab_size})"


Tokenizer = ByteTokenizer | HFTokenizer


def _tokenizer_digest(tokenizer: Any) -> str:
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps(sorted(map(str, tokenizer.all_special_tokens))).encode())
    return digest.hexdigest()[:32]


def load_tokenizer(name_or_path: str) -> HFTokenizer:
    """``transformers.AutoTokenizer`` from a local folder or hub id, checked to hold a vocabulary."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise DataError(
            f"could not load a tokenizer from {name_or_path!r} ({type(error).__name__}); save the "
            "model's tokenizer beside it with tokenizer.save_pretrained(folder)") from None
    if getattr(tokenizer, "vocab_size", 0) == 0 or len(tokenizer) < 2:
        raise DataError(
            f"{name_or_path!r} holds no tokenizer files (tokenizer.json, or vocab.json and merges.txt), "
            "so its tokenizer has an empty vocabulary; save the model's tokenizer there with "
            "tokenizer.save_pretrained(folder)")
    return HFTokenizer(tokenizer, name_or_path)


def model_tokenizer(model: Any) -> Tokenizer:
    """The tokenizer ``model`` reads: bytes for a zoo model, else the tokenizer saved with it.

    A Hugging Face model loaded by :func:`normlens.models.loading.load_model`
    remembers its folder or hub id (``normlens_source``); the tokenizer comes
    from there, once, and is kept on the model (``normlens_tokenizer``).
    """
    cached = getattr(model, "normlens_tokenizer", None)
    if cached is not None:
        return cached
    if getattr(model, "normlens_config", None) is not None:
        return ByteTokenizer()
    source = getattr(model, "normlens_source", None)
    if source is None:
        raise DataError(
            f"cannot tell which tokenizer {type(model).__name__} reads: load Hugging Face models with "
            "normlens.models.loading.load_model, or pass a tokenizer explicitly")
    tokenizer = load_tokenizer(source)
    d_vocab = int(model.cfg.d_vocab)
    if tokenizer.vocab_size > d_vocab:
        raise DataError(
            f"the tokenizer of {source!r} has {tokenizer.vocab_size} tokens but the model only "
            f"{d_vocab} embeddings; the tokenizer and the weights come from different models: save "
            "the matching tokenizer beside the weights")
    model.normlens_tokenizer = tokenizer
    return tokenizer


def decode_text(data: bytes, *, encoding: str = "utf-8", errors: str = "replace",
                source: str = "the corpus") -> tuple[str, int]:
    """Decode ``data`` for a text tokenizer; returns (text, bytes replaced).

    ``errors="replace"`` turns undecodable bytes into U+FFFD and warns with
    their count; ``errors="strict"`` refuses them (DataError naming the offset).
    """
    if errors not in ("replace", "strict"):
        raise DataError(f"errors must be 'replace' or 'strict', got {errors!r}")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"unknown text encoding {encoding!r}; pass e.g. encoding='utf-8' or 'latin-1'") from None
    try:
        return data.decode(encoding), 0
    except UnicodeDecodeError as error:
        if errors == "strict":
            raise DataError(
                f"{source} is not valid {encoding}: byte {error.start} cannot be decoded; pass the "
                "file's encoding (encoding=...) or errors='replace'") from None
    n_replaced = 0

    def count(error: UnicodeDecodeError) -> tuple[str, int]:
        nonlocal n_replaced
        n_replaced += error.end - error.start
        return "\ufffd", error.end

    codecs.register_error("normlens.count-replaced", count)
    text = data.decode(encoding, errors="normlens.count-replaced")
    warnings.warn(
        f"{source}: {n_replaced} of {len(data)} bytes are not valid {encoding} and were replaced by "
        "U+FFFD before tokenizing; pass the file's encoding (encoding=...) if it has another",
        stacklevel=3)
    return text, n_replaced


def token_cache_dir() -> Path:
    """Where tokenized corpora are cached: ``$NORMLENS_CACHE_DIR/tokens`` if set, else
    ``$XDG_CACHE_HOME/normlens/tokens`` (``~/.cache/normlens/tokens``)."""
    root = os.environ.get("NORMLENS_CACHE_DIR")
    if root:
        return Path(root) / "tokens"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "normlens" / "tokens"


@dataclass(frozen=True)
class Encoded:
    """A token stream with how it was made."""

    tokens: torch.Tensor  # (n_tokens,) int64
    n_replaced: int = 0
    cached: bool = False


def encode_corpus(
    data: bytes | str, tokenizer: Tokenizer, *, source: str, encoding: str = "utf-8",
    errors: str = "replace", cache_dir: str | Path | None = None, use_cache: bool = True,
) -> Encoded:
    """Tokenize a corpus given as raw bytes (a file) or text (embedded, datasets).

    Bytes go to a :class:`ByteTokenizer` unchanged; a text tokenizer gets them
    decoded by :func:`decode_text`. Text-tokenizer results are cached under
    ``cache_dir`` (default :func:`token_cache_dir`) in a file named by a hash
    of the tokenizer identity, the content, the encoding and the error rule.
    """
    if isinstance(tokenizer, ByteTokenizer):
        raw = data if isinstance(data, bytes) else data.encode("utf-8")
        return Encoded(tokenizer.encode_bytes(raw))
    raw = data if isinstance(data, bytes) else data.encode("utf-8")
    key = hashlib.sha256("\n".join([
        tokenizer.identity, hashlib.sha256(raw).hexdigest(), encoding if isinstance(data, bytes) else "text",
        errors]).encode()).hexdigest()[:40]
    path = Path(cache_dir if cache_dir is not None else token_cache_dir()) / f"{key}.npz"
    if use_cache and path.is_file():
        try:
            stored = read_npz(path)
            return Encoded(torch.from_numpy(stored["tokens"].astype(np.int64)),
                           int(stored["n_replaced"]), cached=True)
        except (OSError, ValueError, KeyError, EOFError):
            pass  # a damaged cache entry is recomputed and overwritten
    if isinstance(data, bytes):
        text, n_replaced = decode_text(data, encoding=encoding, errors=errors, source=source)
    else:
        text, n_replaced = data, 0
    tokens = tokenizer.encode(text)
    if use_cache:
        dtype = np.int32 if tokenizer.vocab_size < 2**31 else np.int64
        try:
            write_npz(path, tokens=tokens.numpy().astype(dtype), n_replaced=np.int64(n_replaced))
        except OSError as error:
            warnings.warn(f"could not cache the tokenized corpus in {str(path.parent)!r} ({error}); "
                          "set NORMLENS_CACHE_DIR to a writable folder to keep it", stacklevel=2)
    return Encoded(tokens, n_replaced)
