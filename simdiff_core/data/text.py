"""Calibration and evaluation text, cut into deterministic token windows.

    from simdiff_core.data.text import load_text, make_windows
    text = load_text("wikitext2", purpose="calib")      # shipped WikiText-2 validation split
    ids = make_windows(tok, text, n=8, seq_len=256)      # LongTensor (8, 256)

Sources (the same strings work in the CLI's ``--calib`` / ``--text``):

* ``wikitext2`` — WikiText-2 (word-level v1 release, with ``<unk>`` markers; CC BY-SA 3.0) shipped in
  ``simdiff_core/data/wikitext-2``: the validation split for calibration, the test split for
  perplexity. ``wikitext2:valid`` / ``wikitext2:test`` pick a split explicitly.
* ``hf:DATASET[/CONFIG]/SPLIT`` — a Hugging Face dataset through ``datasets`` (needs the network or a
  warm cache); the ``text`` column (or the first string column) is joined with blank lines.
* ``text:RAW`` — the raw text itself.
* anything else — a path to a UTF-8 text file.

Sampling is deterministic: the first ``n`` non-overlapping windows of ``seq_len`` tokens of the
tokenised text. Each window starts the way the tokenizer starts a text (with BOS where the
tokenizer adds one: Gemma models depend on it), followed by ``seq_len - len(prefix)`` text tokens.
Text is read and tokenised in chunks (~256k characters, each cut where a letter or digit is followed by
whitespace, so chunked tokenisation equals tokenising the whole text), only as far as the windows need,
so a large upload is never read whole into memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..common.errors import SimDiffError

DATA_DIR = Path(__file__).parent.parent / "data"
WIKITEXT_DIR = DATA_DIR / "wikitext-2"
WIKITEXT_NOTE = "WikiText-2 word-level v1 release (with <unk> markers), CC BY-SA 3.0"
# Small texts written for the project (CC0, data/calib/LICENSE), for calibration-sensitivity comparisons.
CALIB_DIR = DATA_DIR / "calib"
SHIPPED_SAMPLES = {"code": "shipped code sample (Python source, CC0)",
                   "dialogue": "shipped dialogue sample (conversations, CC0)"}
# Uploads and files larger than this are refused before reading (override with SIMDIFF_MAX_TEXT_MB).
MAX_TEXT_MB = float(os.environ.get("SIMDIFF_MAX_TEXT_MB", "200"))
CHUNK_CHARS = 1 << 18  # tokenise ~256k characters at a time


def max_text_mb() -> float:
    """The size limit for text files and pasted/uploaded text: SIMDIFF_MAX_TEXT_MB, read at each call."""
    try:
        return float(os.environ.get("SIMDIFF_MAX_TEXT_MB", MAX_TEXT_MB))
    except ValueError:
        return MAX_TEXT_MB


@dataclass(frozen=True)
class TextSource:
    """A resolved text source: where it came from and how to stream its characters."""

    spec: str
    description: str
    path: Path | None = None  # file-backed sources stream from here
    text: str | None = None  # in-memory sources

    def chunks(self) -> Iterator[str]:
        """The text in pieces of about ``CHUNK_CHARS`` characters, each cut where a letter or digit
        is followed by whitespace (``_aligned``), for in-memory and file-backed text alike."""
        if self.text is not None:
            text = self.text
            yield from _aligned(text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS))
            return
        try:
            with open(self.path, "r", encoding="utf-8", errors="strict") as f:
                yield from _aligned(iter(lambda: f.read(CHUNK_CHARS), ""))
        except UnicodeDecodeError:
            raise SimDiffError(f"'{self.spec}' is not UTF-8 text (binary file?)") from None
        except OSError as e:
            raise SimDiffError(f"cannot read '{self.spec}': {e.strerror or e}") from None


def _cut_point(block: str) -> int:
    """Index of the last place in ``block`` where a letter or digit is followed by whitespace (0 if
    there is none). Tokenizers' pre-tokenisation never joins a word with the whitespace after it
    (GPT-2-style regexes attach a space to the *following* word), so tokenising the two sides
    separately gives the same ids as tokenising them together. Punctuation is no safe end: Llama-3
    and Qwen2 regexes give it the line breaks that follow (``.\n\n`` is one token there)."""
    i = len(block) - 1
    while i > 0:
        if block[i].isspace() and block[i - 1].isalnum():
            return i
        i -= 1
    return 0


def _aligned(pieces: Iterator[str]) -> Iterator[str]:
    """Re-cut a stream of text pieces at word/whitespace boundaries (``_cut_point``): no word and no
    whitespace run is ever split between two tokenizer calls. A piece with no boundary at all is
    carried into the next one, up to 4 chunk sizes (then cut anyway: one 1M-character 'word')."""
    carry = ""
    for piece in pieces:
        block = carry + piece
        p = _cut_point(block)
        if p == 0 and len(block) < 4 * CHUNK_CHARS:
            carry = block
            continue
        p = p or len(block)
        yield block[:p]
        carry = block[p:]
    if carry:
        yield carry


def load_text(source: str, purpose: str = "calib") -> TextSource:
    """Resolve a source string; ``purpose`` is 'calib' (validation split) or 'eval' (test split)."""
    if source is None or source == "":
        source = "wikitext2"
    if source.startswith("text:"):
        return text_source(source[5:], "pasted text")
    if source == "wikitext2" or source.startswith("wikitext2:"):
        split = source.split(":", 1)[1] if ":" in source else ("valid" if purpose == "calib" else "test")
        split = {"validation": "valid", "val": "valid"}.get(split, split)
        if split not in ("valid", "test"):
            raise SimDiffError(f"unknown WikiText-2 split '{split}': use wikitext2:valid or wikitext2:test")
        return TextSource(source, f"{WIKITEXT_NOTE}, {split} split", path=WIKITEXT_DIR / f"{split}.txt")
    if source.startswith("hf:"):
        return _hf_source(source)
    if source.startswith("shipped:"):
        name = source.split(":", 1)[1]
        if name not in SHIPPED_SAMPLES:
            raise SimDiffError(f"unknown shipped text '{name}': choose from {', '.join(SHIPPED_SAMPLES)}")
        return TextSource(source, SHIPPED_SAMPLES[name], path=CALIB_DIR / f"{name}.txt")
    p = Path(os.path.expanduser(source))
    if not p.exists():
        raise SimDiffError(f"no such text file: {source} (use wikitext2, text:..., hf:DATASET/SPLIT or a path)")
    if p.is_dir():
        raise SimDiffError(f"'{source}' is a directory, not a text file")
    size_mb = p.stat().st_size / 2**20
    limit = max_text_mb()
    if size_mb > limit:
        raise SimDiffError(f"'{source}' is {size_mb:.0f} MB, over the {limit:.0f} MB limit (SIMDIFF_MAX_TEXT_MB)")
    with open(p, "rb") as f:
        head = f.read(8192)
    if b"\x00" in head:
        raise SimDiffError(f"'{source}' is not UTF-8 text (binary file?)")
    return TextSource(source, f"file {p.name}", path=p)


def text_source(text: str, description: str = "pasted text") -> TextSource:
    if text is None or not text.strip():
        raise SimDiffError("the text is empty: paste or upload some text first")
    if "\x00" in text[:8192]:  # NUL decodes as UTF-8 but no real text contains it
        raise SimDiffError(f"{description} is not UTF-8 text (binary file?)")
    limit = max_text_mb()
    if len(text) > limit * 2**20:  # characters <= bytes, so this never refuses text under the limit
        raise SimDiffError(f"the text is {len(text) / 2**20:.0f} MB, over the {limit:.0f} MB limit (SIMDIFF_MAX_TEXT_MB)")
    return TextSource("text", description, text=text)


def _hf_source(source: str) -> TextSource:
    parts = source[3:].strip("/").split("/")
    if len(parts) < 2:
        raise SimDiffError("HF dataset source must look like hf:DATASET/SPLIT or hf:DATASET/CONFIG/SPLIT")
    split = parts[-1]
    rest = parts[:-1]
    # Dataset ids may themselves be "org/name": DATASET[/CONFIG] is ambiguous, so try both readings.
    candidates = [("/".join(rest), None)]
    if len(rest) >= 2:
        candidates.insert(0, ("/".join(rest[:-1]), rest[-1]))
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise SimDiffError("the 'datasets' package is needed for hf: sources: pip install datasets") from None
    from ..models.sources import hub_reachable

    # No route to the hub: datasets' offline mode reads its local cache at once instead of retrying for
    # ~1 minute per candidate. Unreachability holds for the whole machine, so flipping the flag for
    # other threads meanwhile is harmless; it is restored afterwards.
    offline, was = not hub_reachable(datasets=True), datasets.config.HF_HUB_OFFLINE
    ds = last = None
    try:
        if offline:
            datasets.config.HF_HUB_OFFLINE = True
        for name, config in candidates:
            try:
                ds = datasets.load_dataset(name, config, split=split)
                break
            except Exception as e:  # offline, no such dataset/config/split
                last = e
    finally:
        if offline:
            datasets.config.HF_HUB_OFFLINE = was
    if ds is None:
        msg = str(last).strip().splitlines()[0] if last and str(last).strip() else type(last).__name__
        raise SimDiffError(f"could not load dataset '{source[3:]}' (offline or no such dataset/split): {msg[:200]}")
    column = "text" if "text" in ds.column_names else next(
        (c for c in ds.column_names if ds.features[c].dtype == "string"), None)
    if column is None:
        raise SimDiffError(f"dataset '{source[3:]}' has no text column")
    text = "\n\n".join(t for t in ds[column] if t)
    return TextSource(source, f"HF dataset {source[3:]}", text=text)


def bos_prefix(tokenizer) -> list[int]:
    """Token ids the tokenizer puts before a text (usually [BOS] or nothing)."""
    probe = "Hello world"
    with_special = tokenizer(probe).input_ids
    plain = tokenizer(probe, add_special_tokens=False).input_ids
    if len(with_special) > len(plain) and with_special[len(with_special) - len(plain):] == plain:
        return list(with_special[: len(with_special) - len(plain)])
    return []


def iter_tokens(tokenizer, source: TextSource) -> Iterator[list[int]]:
    for chunk in source.chunks():
        if chunk:
            yield tokenizer(chunk, add_special_tokens=False).input_ids


def make_windows(tokenizer, source: TextSource | str, n: int, seq_len: int, purpose: str = "calib") -> torch.Tensor:
    """The first ``n`` non-overlapping windows of ``seq_len`` tokens: LongTensor (n, seq_len)."""
    if isinstance(source, str):
        source = load_text(source, purpose)
    n, seq_len = int(n), int(seq_len)
    if n < 1:
        raise SimDiffError(f"number of windows must be >= 1 (got {n})")
    prefix = bos_prefix(tokenizer)
    body = seq_len - len(prefix)
    if body < 8:
        raise SimDiffError(f"sequence length must be at least {len(prefix) + 8} tokens (got {seq_len})")
    need = n * body
    ids: list[int] = []
    blank = True  # only whitespace so far (tokenizers turn spaces into tokens: count would mislead)
    for chunk in source.chunks():
        blank = blank and not chunk.strip()
        if chunk:
            ids.extend(tokenizer(chunk, add_special_tokens=False).input_ids)
        if len(ids) >= need:
            break
    if len(ids) == 0 or blank:  # windows of pure whitespace would score nothing meaningful
        raise SimDiffError(f"{source.description} is empty or only whitespace: give some text")
    fit = len(ids) // body
    if fit < n:
        raise SimDiffError(
            f"{source.description} has {len(ids)} tokens: only {fit} window(s) of {seq_len} fit, {n} requested; "
            "use fewer samples, a shorter sequence length or more text"
        )
    rows = [prefix + ids[i * body : (i + 1) * body] for i in range(n)]
    return torch.tensor(rows, dtype=torch.long)


def count_windows(tokenizer, source: TextSource | str, seq_len: int, purpose: str = "calib", limit: int = 10**9) -> int:
    """How many windows of ``seq_len`` the source holds (tokenising at most ``limit`` windows' worth)."""
    if isinstance(source, str):
        source = load_text(source, purpose)
    body = seq_len - len(bos_prefix(tokenizer))
    total = 0
    for part in iter_tokens(tokenizer, source):
        total += len(part)
        if total // body >= limit:
            break
    return min(total // max(body, 1), limit)
