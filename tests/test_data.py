import pytest
import torch

from normlens.data import (DataError, decode_bytes, encode_bytes, eval_windows, load_corpus,
                           load_text_file, repeated_sequences, token_windows)
from normlens.data.corpus import split_tokens


def test_embedded_corpus_is_real_text_and_deterministic(embedded_splits):
    from normlens.data import load_embedded

    again = load_embedded(max_bytes=200_000)
    assert torch.equal(embedded_splits.train, again.train)
    assert torch.equal(embedded_splits.val, again.val)
    text = decode_bytes(embedded_splits.train[:5000])
    assert "def " in text and "the " in text
    assert embedded_splits.vocab_size == 256
    assert 0.05 < embedded_splits.val.numel() / (embedded_splits.train.numel() + embedded_splits.val.numel()) < 0.2


def test_split_is_a_partition_fixed_by_seed():
    tokens = torch.arange(10_000) % 256
    a, b = split_tokens("t", tokens, seed=0, block=100), split_tokens("t", tokens, seed=1, block=100)
    assert a.train.numel() + a.val.numel() == 10_000
    assert not torch.equal(a.val, b.val)
    assert torch.equal(a.val, split_tokens("t", tokens, seed=0, block=100).val)


def test_byte_round_trip():
    assert decode_bytes(encode_bytes("héllo")) == "héllo"


def test_windows_shape_and_bounds(embedded_splits):
    windows = eval_windows(embedded_splits, n_seq=5, n_ctx=33, seed=0)
    assert windows.shape == (5, 33) and windows.dtype == torch.int64
    assert torch.equal(windows, eval_windows(embedded_splits, n_seq=5, n_ctx=33, seed=0))
    assert int(windows.min()) >= 0 and int(windows.max()) < 256
    # each row is a contiguous slice of the validation stream
    val = embedded_splits.val
    slices = val.unfold(0, 33, 1)  # (n_val - 32, 33): every window of the stream
    for row in windows:
        assert (slices == row).all(-1).any(), "a window is not a slice of the validation tokens"


def test_repeated_sequences_are_inductable():
    tokens = repeated_sequences(3, 20, period=7, vocab_size=50, seed=0)
    assert torch.equal(tokens[:, 7:], tokens[:, :-7])
    assert int(tokens.max()) < 50


def test_text_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("hello world. " * 100)
    splits = load_corpus(str(path))
    assert splits.name == "file:t.txt"


@pytest.mark.parametrize("content,message", [(None, "does not exist"), ("", "is empty"), ("short", "at least 256")])
def test_bad_data_names_the_fix(tmp_path, content, message):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_text_file(path)


def test_window_longer_than_stream():
    with pytest.raises(DataError, match="smaller n_ctx"):
        token_windows(torch.arange(10), n_seq=1, n_ctx=64)


def test_binary_corpus_keeps_its_bytes(tmp_path):
    """36,864 random bytes (mostly invalid UTF-8) are 36,864 byte tokens, each the byte it was."""
    import numpy as np

    data = np.random.default_rng(0).integers(0, 256, 18 * 2048, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    splits = load_text_file(path)
    assert splits.train.numel() + splits.val.numel() == len(data)
    counts = torch.bincount(torch.cat([splits.train, splits.val]), minlength=256)
    assert torch.equal(counts, torch.from_numpy(np.bincount(np.frombuffer(data, np.uint8), minlength=256)))
    assert splits.n_replaced == 0 and splits.tokenizer == "bytes"
    # every block of the split is a slice of the file at a block boundary
    blocks = torch.cat([splits.train, splits.val]).view(-1, 2048)
    original = encode_bytes(data).view(-1, 2048)
    assert all((original == block).all(-1).any() for block in blocks)


def test_decoding_for_text_tokenizers_is_explicit():
    from normlens.data import decode_text

    latin = "café über naïve".encode("latin-1")
    assert decode_text(latin, encoding="latin-1") == ("café über naïve", 0)
    with pytest.warns(UserWarning, match="3 of 15 bytes are not valid utf-8 and were replaced"):
        text, n_replaced = decode_text(latin, encoding="utf-8", source="t.txt")
    assert n_replaced == 3 and text.count("\ufffd") == 3
    with pytest.raises(DataError, match="not valid utf-8: byte 3 cannot be decoded"):
        decode_text(latin, errors="strict")
    with pytest.raises(DataError, match="unknown text encoding 'klingon'"):
        decode_text(latin, encoding="klingon")
