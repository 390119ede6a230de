"""Data: the embedded corpus, local files, `datasets`, and synthetic tasks."""
from normlens.data.corpus import (
    BYTE_VOCAB,
    DataError,
    TokenSplits,
    decode_bytes,
    encode_bytes,
    eval_windows,
    load_corpus,
    load_embedded,
    load_hf_dataset,
    load_text_file,
    token_windows,
)
from normlens.data.synthetic import repeated_sequences

__all__ = [
    "BYTE_VOCAB", "DataError", "TokenSplits", "decode_bytes", "encode_bytes", "eval_windows",
    "load_corpus", "load_embedded", "load_hf_dataset", "load_text_file", "token_windows",
    "repeated_sequences",
]
