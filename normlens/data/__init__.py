"""Data: the embedded corpus, local files, `datasets`, tokenizers, and synthetic tasks."""
from normlens.data.corpus import (
    BYTE_VOCAB,
    DataError,
    TokenSplits,
    check_vocabulary,
    corpus_for_model,
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
from normlens.data.tokenize import (
    ByteTokenizer,
    HFTokenizer,
    decode_text,
    load_tokenizer,
    model_tokenizer,
    token_cache_dir,
)

__all__ = [
    "BYTE_VOCAB", "ByteTokenizer", "DataError", "HFTokenizer", "TokenSplits", "check_vocabulary",
    "corpus_for_model", "decode_bytes", "decode_text", "encode_bytes", "eval_windows", "load_corpus",
    "load_embedded", "load_hf_dataset", "load_text_file", "load_tokenizer", "model_tokenizer",
    "repeated_sequences", "token_cache_dir", "token_windows",
]
