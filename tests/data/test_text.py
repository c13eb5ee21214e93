"""Text sources: chunked reading and tokenisation equal tokenising the whole text (chunks end between
words, also for tokenizers whose pre-tokenisation glues punctuation to line breaks)."""

from __future__ import annotations

# ------------------------------------------------------------------ item 8c: text chunks end between words
def test_chunked_tokenisation_equals_whole_text_in_memory_and_from_file(tokenizer, tmp_path):
    import random

    from simdiff_core.data.text import CHUNK_CHARS, iter_tokens, load_text, text_source

    rng = random.Random(0)
    words = ["layer", "pruning", "redundant", "transformer", "blocks", "cosine", "similarity", "3.14", "(MSSD)"]
    seps = [" ", " ", " ", "\n", "\n\n", " \n ", "  "]
    parts, n = [], 0
    while n < int(2.3 * CHUNK_CHARS):
        w = rng.choice(words) + rng.choice(seps)
        parts.append(w)
        n += len(w)
    text = "".join(parts)
    # the old fixed cut fell inside a word here (the test needs a case where that matters)
    assert not text[CHUNK_CHARS - 1].isspace() and not text[CHUNK_CHARS].isspace()
    whole = tokenizer(text, add_special_tokens=False).input_ids
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    for src in (text_source(text), load_text(str(f))):
        chunks = list(src.chunks())
        assert "".join(chunks) == text and len(chunks) >= 2
        assert all(c[-1].isspace() is False and nxt[0].isspace() for c, nxt in zip(chunks, chunks[1:]))
        assert [t for part in iter_tokens(tokenizer, src) for t in part] == whole


def _regex_bpe_tokenizer(pattern: str):
    """A byte-level BPE tokenizer with the given pre-tokenisation regex and merges that make '.\\n\\n'
    one token (as Llama-3 and Qwen2 vocabularies do)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    merges = [("Ċ", "Ċ"), (".", "ĊĊ"), (".", "Ċ")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return PreTrainedTokenizerFast(tokenizer_object=tok)


# Llama-3's pre-tokenisation regex (Qwen2's differs only in \p{N} vs \p{N}{1,3}): punctuation takes the
# line breaks after it (" ?[^\s\p{L}\p{N}]+[\r\n]*"), so "word.|\n\n" is not a safe place to cut.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def test_chunked_tokenisation_equals_whole_text_for_a_llama3_style_tokenizer(monkeypatch, tmp_path):
    import random

    from simdiff_core.data import text as data
    from simdiff_core.data.text import iter_tokens, load_text, text_source

    tok = _regex_bpe_tokenizer(LLAMA3_PATTERN)
    monkeypatch.setattr(data, "CHUNK_CHARS", 64)  # many chunk boundaries in a small text
    rng = random.Random(1)
    words = ["layer", "pruning.", "blocks", "cosine,", "3.14", "(MSSD)", "end."]
    seps = [" ", "\n", "\n\n", " \n "]
    text = "".join(rng.choice(words) + rng.choice(seps) for _ in range(600))
    whole = tok(text, add_special_tokens=False).input_ids
    assert tok.convert_tokens_to_ids(".ĊĊ") in whole  # the merge across "." and the line breaks happens
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    for src in (text_source(text), load_text(str(f))):
        chunks = list(src.chunks())
        assert "".join(chunks) == text and len(chunks) > 20
        assert [t for part in iter_tokens(tok, src) for t in part] == whole
