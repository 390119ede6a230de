"""Tiny GPT-2 stand-ins with their own tokenizer, saved like a Hugging Face model (no network)."""
from pathlib import Path

import torch

SENTENCES = ["the cat sat on the mat .", "a dog ran in the park .", "def f ( x ) : return x",
             "the model reads its own tokens .", "import torch as nn"]


def word_tokenizer(extra=()):
    """A WordLevel tokenizer trained on a few sentences, as a transformers fast tokenizer."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES + list(extra), trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def byte_bpe_tokenizer(vocab_size=300):
    """A byte-level BPE tokenizer (GPT-2's kind) trained on part of the embedded corpus."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from normlens.data.corpus import embedded_text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator([embedded_text(100_000)], trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok)


def save_gpt2(folder, tokenizer, *, vocab_size=None, n_layer=1, n_embd=16, n_head=2, n_positions=32, seed=0):
    """Save a random GPT-2 (and ``tokenizer`` when given) to ``folder``; returns the folder."""
    import transformers

    config = transformers.GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions,
                                     vocab_size=vocab_size or len(tokenizer), bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return Path(folder)
