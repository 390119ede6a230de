"""Tokenizer-aware data: a Hugging Face model reads its own tokenizer's ids (no network)."""
import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from normlens.data import (DataError, HFTokenizer, check_vocabulary, corpus_for_model, eval_windows,  # noqa: E402
                           load_embedded, load_text_file, model_tokenizer, token_cache_dir)
from normlens.data.tokenize import ByteTokenizer, encode_corpus  # noqa: E402
from normlens.models import build_model  # noqa: E402
from normlens.models.loading import load_model  # noqa: E402

from hf_stand_in import SENTENCES, save_gpt2, word_tokenizer  # noqa: E402, I001


@pytest.fixture(autouse=True)
def _offline_and_private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NORMLENS_CACHE_DIR", str(tmp_path / "cache"))


def _tokenizer(extra=()):
    return word_tokenizer(extra)


def _save_model(folder, tokenizer, vocab_size=None):
    return save_gpt2(folder, tokenizer, vocab_size=vocab_size)


@pytest.fixture
def gpt2_with_tokenizer(tmp_path):
    tokenizer = _tokenizer()
    return _save_model(tmp_path / "model", tokenizer), tokenizer


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(SENTENCES * 40))
    return path


def test_hf_model_reads_its_own_tokenizer(gpt2_with_tokenizer, text_file):
    folder, tokenizer = gpt2_with_tokenizer
    model = load_model(str(folder))
    tok = model_tokenizer(model)
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == len(tokenizer)
    splits = corpus_for_model(model, str(text_file))
    expected = tokenizer(text_file.read_text(), add_special_tokens=False)["input_ids"]  # the reference
    assert encode_corpus(text_file.read_bytes(), tok, source="c").tokens.tolist() == expected
    stream = torch.cat([splits.train, splits.val])  # whole blocks of the stream, shuffled
    assert torch.equal(torch.bincount(stream, minlength=len(tokenizer)),
                       torch.bincount(torch.tensor(expected[: stream.numel()]), minlength=len(tokenizer)))
    assert splits.vocab_size == len(tokenizer) and splits.tokenizer == tok.identity
    windows = eval_windows(splits, n_seq=3, n_ctx=int(model.cfg.n_ctx), seed=0)
    assert windows.shape == (3, 32) and int(windows.max()) < len(tokenizer)
    assert torch.isfinite(model(windows)).all()


def test_tokenized_corpus_is_cached_by_tokenizer_and_content(tmp_path, text_file):
    tok_a, tok_b = HFTokenizer(_tokenizer(), "a"), HFTokenizer(_tokenizer(extra=["zebra crossing"]), "b")
    first = encode_corpus(text_file.read_bytes(), tok_a, source="corpus.txt")
    again = encode_corpus(text_file.read_bytes(), tok_a, source="corpus.txt")
    assert not first.cached and again.cached and torch.equal(first.tokens, again.tokens)
    files = sorted((tmp_path / "cache" / "tokens").iterdir())
    assert token_cache_dir() == tmp_path / "cache" / "tokens" and len(files) == 1
    other = encode_corpus(text_file.read_bytes(), tok_b, source="corpus.txt")  # another tokenizer
    assert not other.cached
    edited = encode_corpus(text_file.read_bytes() + b" cat", tok_a, source="corpus.txt")  # other content
    assert not edited.cached and len(list((tmp_path / "cache" / "tokens").iterdir())) == 3
    # a damaged cache entry is recomputed, not trusted
    files[0].write_bytes(b"garbage")
    assert torch.equal(encode_corpus(text_file.read_bytes(), tok_a, source="corpus.txt").tokens, first.tokens)


def test_text_tokenizer_decodes_explicitly_and_says_what_it_replaced(tmp_path, gpt2_with_tokenizer):
    folder, _ = gpt2_with_tokenizer
    path = tmp_path / "latin.txt"
    path.write_bytes(("the cat sat on the mat . caf\xe9 \n" * 60).encode("latin-1"))
    tok = model_tokenizer(load_model(str(folder)))
    with pytest.warns(UserWarning, match="60 of 1860 bytes are not valid utf-8 and were replaced"):
        splits = load_text_file(path, tokenizer=tok)
    assert splits.n_replaced == 60
    clean = load_text_file(path, tokenizer=tok, encoding="latin-1", cache_dir=tmp_path / "c2")
    assert clean.n_replaced == 0
    with pytest.raises(DataError, match="not valid utf-8"):
        load_text_file(path, tokenizer=tok, errors="strict", cache_dir=tmp_path / "c3")


def test_byte_corpus_fed_to_a_gpt2_is_refused(gpt2_with_tokenizer):
    folder, _ = gpt2_with_tokenizer
    model = load_model(str(folder))
    with pytest.raises(DataError, match="tokenized as bytes, but the model reads .*corpus_for_model"):
        check_vocabulary(model, load_embedded(max_bytes=20_000))


def test_ids_beyond_the_vocabulary_are_refused_not_remapped():
    model = build_model(n_layers=1, d_model=16, n_heads=2, n_ctx=16, d_vocab=32)
    assert isinstance(model_tokenizer(model), ByteTokenizer)
    with pytest.raises(DataError, match=r"token ids up to \d+ but the model's vocabulary has 32 entries"):
        corpus_for_model(model, max_bytes=20_000)


def test_folder_without_tokenizer_files_names_the_fix(tmp_path):
    model = load_model(str(_save_model(tmp_path / "bare", None, vocab_size=24)))
    with pytest.raises(DataError, match="holds no tokenizer files .* tokenizer.save_pretrained"):
        corpus_for_model(model)


def test_tokenizer_larger_than_the_model_is_refused(tmp_path):
    tokenizer = _tokenizer()
    model = load_model(str(_save_model(tmp_path / "small", tokenizer, vocab_size=len(tokenizer) - 3)))
    with pytest.raises(DataError, match=f"has {len(tokenizer)} tokens but the model only {len(tokenizer) - 3}"):
        model_tokenizer(model)


@pytest.mark.parametrize("verb", ["probe", "hessian", "landscape"])
def test_cli_verbs_feed_the_models_tokens(verb, gpt2_with_tokenizer, monkeypatch, tmp_path):
    """`normlens probe|hessian|landscape <hf folder>` evaluate on the model's own tokenizer's ids."""
    from typer.testing import CliRunner

    import normlens.cli.hessian
    import normlens.cli.landscape
    import normlens.cli.probe
    from normlens.cli import app

    folder, tokenizer = gpt2_with_tokenizer
    seen = {}

    def capture(model, tokens, out, *args, **kwargs):
        seen["tokens"] = tokens
        raise ValueError("captured the tokens")  # stops the verb with exit 2 before any analysis

    target = {"probe": (normlens.cli.probe, "probe_model"), "hessian": (normlens.cli.hessian, "run_hessian"),
              "landscape": (normlens.cli.landscape, "run_landscape")}[verb]
    monkeypatch.setattr(*target, capture)
    result = CliRunner().invoke(app, [verb, str(folder), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "captured the tokens" in result.output, result.output
    tokens = seen["tokens"]
    reference = tokenizer(_embedded_text(), add_special_tokens=False)["input_ids"]
    assert tokens.shape[1] == 32 and int(tokens.max()) < len(tokenizer)  # the model's context and vocabulary
    windows = torch.tensor(reference).unfold(0, tokens.shape[1], 1)  # every window of the tokenized text
    for row in tokens[:3]:
        assert (windows == row).all(-1).any(), "a window is not a slice of the tokenized corpus"


def _embedded_text():
    from normlens.data.corpus import embedded_text

    return embedded_text()


@pytest.mark.parametrize("verb,options", [
    ("probe", ["--n-seq", "2", "--n-ctx", "16"]),
    ("hessian", ["--k", "2", "--n-seq", "2", "--n-ctx", "16", "--no-blocks", "--trace-matvecs", "6",
                 "--density-probes", "1", "--density-steps", "6"]),
    ("landscape", ["--resolution", "3", "--n-seq", "2", "--n-ctx", "16"]),
])
def test_cli_verbs_run_end_to_end_on_a_local_gpt2_with_its_tokenizer(verb, options, gpt2_with_tokenizer, tmp_path):
    """A GPT-2 saved with save_pretrained (and its tokenizer) goes through each verb to its report."""
    from typer.testing import CliRunner

    from normlens.cli import app

    folder, _ = gpt2_with_tokenizer
    out = tmp_path / verb
    result = CliRunner().invoke(app, [verb, str(folder), "--out", str(out)] + options)
    assert result.exit_code == 0, result.output
    assert (out / "report.html").is_file() and (out / "manifest.json").is_file()
    assert str(folder) in (out / "report.html").read_text()
