r"""CLIP byte-level BPE tokenizer: prompt strings -> int64 token ids [B, 77].

Produces the ids Stable Diffusion v1 conditioned on: those of transformers' original
(Python, "slow") ``CLIPTokenizer`` for openai/clip-vit-large-patch14 with ``ftfy``
installed, called with ``truncation=True, max_length=77, padding="max_length"``.
The algorithm is SPEC §1.1:

1. literal ``<|startoftext|>`` / ``<|endoftext|>`` split the raw text; they become
   ids 49406 / 49407 and the pieces between them are tokenized independently;
2. each piece is cleaned with ``ftfy.fix_text`` and lowercased;
3. the CLIP pre-tokenizer pattern (case-insensitive) cuts it into words;
4. each word's UTF-8 bytes are mapped to printable characters, BPE-merged with the
   first 48,894 merge rules (``</w>`` marks the word's last symbol) and looked up;
5. the first 75 content ids are kept between BOS 49406 and EOS 49407 and the row is
   padded to 77 with 49407.

The reference also collapses whitespace runs to one space and strips the ends between
steps 2 and 3. That cannot change the ids, so it is skipped: the collapse uses the same
``\s`` that the pattern skips between words, and ``str.strip`` differs from ``\s`` only
on U+001C..U+001F, which ``ftfy`` has already removed.

The vocabulary is not shipped with the package. :func:`find_vocab` locates it
(explicit path, ``ASYMVQ_CLIP_VOCAB``, local Hugging Face cache) and
:meth:`CLIPTokenizer.to_metadata` / :meth:`CLIPTokenizer.from_metadata` carry it inside
a converted model file's string metadata.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import os
import re
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union, cast

import ftfy
import numpy as np
import regex

from .errors import Error

__all__ = [
    "BOS_ID",
    "CONTEXT_LENGTH",
    "CLIPTokenizer",
    "ENV_VAR",
    "EOS_ID",
    "HF_REPO_ID",
    "METADATA_PREFIX",
    "NUM_MERGES",
    "VOCAB_SIZE",
    "VocabNotFoundError",
    "find_vocab",
    "load_tokenizer",
    "throughput",
]

CONTEXT_LENGTH = 77
"""Row length of the token-id array (BOS + 75 content tokens + EOS)."""
NUM_MERGES = 48894
"""Number of merge rules used: 49408 ids - 256 bytes - 256 ``</w>`` bytes - 2 specials."""
VOCAB_SIZE = 49408
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
BOS_ID = 49406
EOS_ID = 49407
PAD_ID = EOS_ID
ENV_VAR = "ASYMVQ_CLIP_VOCAB"
HF_REPO_ID = "openai/clip-vit-large-patch14"
METADATA_PREFIX = "asymvq-clip-bpe-1:"
"""Start of the string made by :meth:`CLIPTokenizer.to_metadata`; base64 of gzip'd merges follow."""

_MAX_CONTENT = CONTEXT_LENGTH - 2
_END_OF_WORD = "</w>"
_MERGES_HEADER = "#version: 0.2"
_GZIP_MAGIC = b"\x1f\x8b"
_CACHE_LIMIT = 200_000

# Pre-tokenizer: special literals, English contractions, runs of letters, ONE number
# character, runs of anything else but whitespace. IGNORECASE matters even on lowercased
# text, as in the reference: "'ſ" (long s) matches "'s", and U+0345 (combining
# ypogegrammeni, case-equivalent to a letter) matches no alternative and is dropped.
_WORD_RE = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)
# A special literal can also come out of the pre-tokenizer (e.g. "<|ENDOFTEXT|>" once
# lowercased); as in the reference, it then maps to its special id instead of going to BPE.
_SPECIAL_WORDS = {BOS_TOKEN: (BOS_ID,), EOS_TOKEN: (EOS_ID,)}
_SPECIAL_SPLIT_RE = re.compile("(" + re.escape(BOS_TOKEN) + "|" + re.escape(EOS_TOKEN) + ")")
# Fast path. Text made only of printable ASCII without '&' (HTML entities) plus TAB, LF,
# FF, CR is left unchanged by ftfy.fix_text up to CR -> LF (both separators); anything
# else (non-ASCII, other control characters, '&') goes through ftfy. On such text, once
# lowercased, the pattern above reduces to this plain `re` one (letters a-z, digits 0-9,
# the same separators), which is several times faster than the Unicode one.
_NEEDS_FTFY_RE = re.compile(r"[^\t\n\x0c\r\x20-\x25\x27-\x7e]")
_ASCII_WORD_RE = re.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\t\n\x0c\r a-z0-9]+"
)

PathLike = Union[str, "os.PathLike[str]"]


class VocabNotFoundError(Error, FileNotFoundError):
    """No CLIP BPE vocabulary could be located; the message lists every way to provide one."""


# Bytes that stand for themselves in the byte -> character mapping; the other 68 map to
# U+0100.. in increasing byte order (SPEC §1.1 step 4).
_DIRECT_BYTES = [*range(33, 127), *range(161, 173), *range(174, 256)]
_REMAPPED_BYTES = [b for b in range(256) if b not in set(_DIRECT_BYTES)]


def _byte_alphabet() -> List[str]:
    """Printable stand-in character for each byte value 0..255."""
    table = {b: chr(b) for b in _DIRECT_BYTES}
    table.update({b: chr(256 + n) for n, b in enumerate(_REMAPPED_BYTES)})
    return [table[b] for b in range(256)]


_BYTE_CHARS = _byte_alphabet()


def _vocab_order() -> List[str]:
    """The 256 byte characters in vocabulary order: directly printable bytes first."""
    return [_BYTE_CHARS[b] for b in _DIRECT_BYTES + _REMAPPED_BYTES]


def _parse_merges(text: str) -> List[Tuple[str, str]]:
    """First NUM_MERGES rules of a merges file (header line, then one "A B" rule a line)."""
    lines = text.strip().split("\n")
    if "#version" not in lines[0]:
        raise ValueError(
            f"not a CLIP BPE merges file: the first line must be the '#version: 0.2' header (got {lines[0][:60]!r})"
        )
    rules = lines[1 : NUM_MERGES + 1]
    if len(rules) < NUM_MERGES:
        raise ValueError(
            f"CLIP BPE merges file has {len(rules)} merge rules; "
            f"openai/clip-vit-large-patch14 needs at least {NUM_MERGES}"
        )
    merges = []
    for number, line in enumerate(rules, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"CLIP BPE merges file, line {number}: expected 'A B', got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _derived_vocab(merges: Sequence[Tuple[str, str]]) -> Dict[str, int]:
    """The CLIP vocabulary implied by the merges (SPEC §1.1 "Vocabulary structure")."""
    base = _vocab_order()
    tokens = base + [c + _END_OF_WORD for c in base] + [a + b for a, b in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(
            f"CLIP BPE merges produce {len(vocab)} distinct tokens instead of {VOCAB_SIZE}: "
            "the merges file is not the CLIP vocabulary"
        )
    return vocab


def _check_vocab(vocab: Mapping[str, int], source: str) -> None:
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"{source}: {len(vocab)} entries, expected {VOCAB_SIZE}")
    if vocab.get(BOS_TOKEN) != BOS_ID or vocab.get(EOS_TOKEN) != EOS_ID:
        raise ValueError(
            f"{source}: {BOS_TOKEN} must have id {BOS_ID} and {EOS_TOKEN} id {EOS_ID} "
            f"(got {vocab.get(BOS_TOKEN)} and {vocab.get(EOS_TOKEN)})"
        )
    if not all(type(v) is int for v in vocab.values()) or sorted(vocab.values()) != list(range(VOCAB_SIZE)):
        raise ValueError(f"{source}: ids must be exactly 0..{VOCAB_SIZE - 1}, each once")


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        data = gzip.decompress(data)
    return data.decode("utf-8")


class CLIPTokenizer:
    """CLIP BPE tokenizer with the ids of transformers' slow ``CLIPTokenizer`` (SD v1).

    Build it with :meth:`from_file`, :meth:`from_merges_text` or :meth:`from_metadata`;
    call it on a prompt or a sequence of prompts to get an int64 array ``[B, 77]``.
    Instances keep a per-word cache and are safe to share between threads.
    """

    def __init__(self, merges: Sequence[Tuple[str, str]], vocab: Optional[Mapping[str, int]] = None):
        """Use the given merge rules (first :data:`NUM_MERGES` used) and token -> id table.

        ``vocab`` defaults to the table the merges imply; a given one (a ``vocab.json``)
        is used as is after checking its size and special ids.
        """
        pairs = [cast(Tuple[str, str], tuple(m)) for m in merges[:NUM_MERGES]]
        if len(pairs) < NUM_MERGES:
            raise ValueError(f"{len(pairs)} merge rules given; {NUM_MERGES} needed")
        derived = _derived_vocab(pairs)
        if vocab is None:
            vocab = derived
        else:
            vocab = dict(vocab)
            _check_vocab(vocab, "vocab.json")
        self._merges: List[Tuple[str, str]] = pairs
        self._vocab_is_derived = vocab == derived
        self._vocab: Dict[str, int] = dict(vocab)
        self._ranks: Dict[Tuple[str, str], int] = {m: r for r, m in enumerate(merges)}
        self._cache: Dict[str, Tuple[int, ...]] = {}

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_file(cls, path: Union[PathLike, Tuple[PathLike, PathLike]]) -> "CLIPTokenizer":
        """Load a vocabulary from disk.

        ``path`` is one of: a merges file (``bpe_simple_vocab_16e6.txt.gz``, its
        uncompressed ``.txt`` or a ``merges.txt``; gzip is detected from the content),
        a directory holding ``vocab.json`` and ``merges.txt`` (a Hugging Face snapshot),
        or a ``(vocab.json, merges.txt)`` pair.
        """
        if isinstance(path, (tuple, list)):
            if len(path) != 2:
                raise ValueError("expected a (vocab.json, merges.txt) pair of paths")
            vocab_path, merges_path = Path(path[0]), Path(path[1])
        else:
            p = Path(path)
            if p.is_dir():
                vocab_path, merges_path = p / "vocab.json", p / "merges.txt"
            elif p.suffix == ".json":
                vocab_path, merges_path = p, p.with_name("merges.txt")
            else:
                if not p.is_file():
                    raise FileNotFoundError(f"CLIP vocabulary file {p} does not exist")
                return cls.from_merges_text(_read_text(p))
        missing = [str(q) for q in (vocab_path, merges_path) if not q.is_file()]
        if missing:
            raise FileNotFoundError(f"CLIP vocabulary: missing {', '.join(missing)}")
        with open(vocab_path, encoding="utf-8") as f:
            vocab = json.load(f)
        if not isinstance(vocab, dict):
            raise ValueError(f"{vocab_path}: expected a JSON object mapping token -> id")
        return cls(_parse_merges(_read_text(merges_path)), vocab)

    @classmethod
    def from_merges_text(cls, text: str) -> "CLIPTokenizer":
        """Build from the text of a merges file (``#version`` header line, then "A B" rules)."""
        return cls(_parse_merges(text))

    @classmethod
    def from_metadata(cls, value: str) -> "CLIPTokenizer":
        """Rebuild a tokenizer from the string made by :meth:`to_metadata`."""
        if not isinstance(value, str) or not value.startswith(METADATA_PREFIX):
            raise ValueError(f"not an embedded CLIP vocabulary: the metadata value must start with {METADATA_PREFIX!r}")
        try:
            text = gzip.decompress(base64.b64decode(value[len(METADATA_PREFIX) :], validate=True))
        except (binascii.Error, OSError, EOFError) as exc:
            raise ValueError(f"embedded CLIP vocabulary is corrupt: {exc}") from exc
        return cls.from_merges_text(text.decode("utf-8"))

    def to_metadata(self) -> str:
        """The vocabulary as one ASCII string for a safetensors metadata entry.

        Format: :data:`METADATA_PREFIX` followed by base64 of the gzip'd merges text
        (``#version: 0.2`` header and the 48,894 rules used). The token -> id table is
        implied by the merges, so a tokenizer whose ``vocab.json`` differs from that
        table cannot be embedded (ValueError). Deterministic: same vocabulary, same string.
        """
        if not self._vocab_is_derived:
            raise ValueError(
                "this tokenizer's vocab.json is not the table its merges imply "
                "(not the openai/clip-vit-large-patch14 vocabulary); it cannot be embedded"
            )
        text = _MERGES_HEADER + "\n" + "".join(f"{a} {b}\n" for a, b in self._merges)
        packed = gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)
        return METADATA_PREFIX + base64.b64encode(packed).decode("ascii")

    # ------------------------------------------------------------------ tokenizing

    def __call__(self, prompts: Union[str, Sequence[str]]) -> np.ndarray:
        """Token ids ``[B, 77]`` int64 for one prompt (B = 1) or a sequence of prompts.

        Each row: 49406, the first 75 content ids, 49407, then 49407 padding.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        elif not isinstance(prompts, (list, tuple)):
            try:
                prompts = list(prompts)
            except TypeError:
                raise TypeError(f"prompts must be a str or a sequence of str, got {type(prompts).__name__}") from None
        out = np.full((len(prompts), CONTEXT_LENGTH), PAD_ID, dtype=np.int64)
        out[:, 0] = BOS_ID
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError(f"prompts[{i}] must be a str, got {type(prompt).__name__}")
            ids = self.encode(prompt)
            if len(ids) > _MAX_CONTENT:
                ids = ids[:_MAX_CONTENT]
            if ids:
                out[i, 1 : 1 + len(ids)] = ids
            # out[i, 1 + len(ids)] is already EOS: padding and EOS are the same id.
        return out

    def encode(self, text: str) -> List[int]:
        """Content ids of one string: no BOS/EOS, no truncation, no padding."""
        ids: List[int] = []
        if "<|" in text:
            pieces = _SPECIAL_SPLIT_RE.split(text)
            for k, piece in enumerate(pieces):
                if k % 2:
                    ids.append(BOS_ID if piece == BOS_TOKEN else EOS_ID)
                elif piece:
                    self._encode_piece(piece, ids)
        else:
            self._encode_piece(text, ids)
        return ids

    def _encode_piece(self, text: str, out: List[int]) -> None:
        if _NEEDS_FTFY_RE.search(text) is None:
            words = _ASCII_WORD_RE.findall(text.lower())
        else:
            words = _WORD_RE.findall(ftfy.fix_text(text).lower())
        cache = self._cache
        for word in words:
            ids = cache.get(word)
            if ids is None:
                ids = self._encode_word(word)
            out += ids

    def _encode_word(self, word: str) -> Tuple[int, ...]:
        ids: Optional[Tuple[int, ...]] = _SPECIAL_WORDS.get(word)
        if ids is None:
            chars = "".join([_BYTE_CHARS[b] for b in word.encode("utf-8")])
            vocab = self._vocab
            ids = tuple(vocab.get(s, EOS_ID) for s in self._bpe(chars))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[word] = ids
        return ids

    def _bpe(self, chars: str) -> List[str]:
        """Merge the symbols of one byte-mapped word, lowest-ranked adjacent pair first."""
        symbols = list(chars)
        symbols[-1] += _END_OF_WORD
        ranks = self._ranks
        while len(symbols) > 1:
            best: Optional[Tuple[str, str]] = None
            best_rank = len(ranks)
            for pair in zip(symbols, symbols[1:]):
                rank = ranks.get(pair)
                if rank is not None and rank < best_rank:
                    best, best_rank = pair, rank
            if best is None:
                break
            first, second = best
            merged: List[str] = []
            i, n = 0, len(symbols)
            while i < n:
                if i + 1 < n and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    @property
    def vocab_size(self) -> int:
        """Number of ids (49408)."""
        return len(self._vocab)


# ---------------------------------------------------------------------- resolution


def _hf_hub_cache() -> Path:
    """The Hugging Face hub cache directory, resolved as huggingface_hub does."""
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if hub:
        return Path(hub).expanduser()
    home = os.environ.get("HF_HOME")
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        home = os.path.join(xdg, "huggingface")
    return Path(home).expanduser() / "hub"


def _hf_snapshot(hub: Path) -> Optional[Path]:
    """A snapshot of openai/clip-vit-large-patch14 in ``hub`` with vocab.json + merges.txt."""
    repo = hub / ("models--" + HF_REPO_ID.replace("/", "--"))
    candidates: List[Path] = []
    ref = repo / "refs" / "main"
    if ref.is_file():
        candidates.append(repo / "snapshots" / ref.read_text(encoding="utf-8").strip())
    snapshots = repo / "snapshots"
    if snapshots.is_dir():
        candidates += sorted(p for p in snapshots.iterdir() if p.is_dir())
    for snap in candidates:
        if (snap / "vocab.json").is_file() and (snap / "merges.txt").is_file():
            return snap
    return None


def _not_found(problem: str) -> VocabNotFoundError:
    return VocabNotFoundError(
        f"{problem}\n"
        "asymvq does not ship the CLIP BPE vocabulary (openai/clip-vit-large-patch14). Provide it by one of:\n"
        "  1. an explicit path: bpe_simple_vocab_16e6.txt.gz (or .txt), or a directory with "
        "vocab.json + merges.txt;\n"
        f"  2. the {ENV_VAR} environment variable set to such a path;\n"
        f"  3. a local Hugging Face cache of {HF_REPO_ID} (looked in {_hf_hub_cache()}; "
        "nothing is downloaded);\n"
        "  4. a converted model file with the vocabulary embedded: "
        "python -m asymvq convert --tokenizer PATH ..."
    )


def find_vocab(explicit: Optional[PathLike] = None) -> Path:
    """Locate the CLIP vocabulary; returns a file or a directory for :meth:`CLIPTokenizer.from_file`.

    Order: ``explicit``; else the ``ASYMVQ_CLIP_VOCAB`` environment variable; else a
    snapshot of openai/clip-vit-large-patch14 in the local Hugging Face cache
    (``HF_HUB_CACHE``, ``HF_HOME``/hub or ~/.cache/huggingface/hub). A path that is given
    but missing is an error, not a fall-through. Never downloads.

    Raises:
        VocabNotFoundError: nothing found; the message lists every option.
    """
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.exists():
            raise _not_found(f"CLIP vocabulary path {str(p)!r} does not exist.")
        return p
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if not p.exists():
            raise _not_found(f"{ENV_VAR}={env!r} does not exist.")
        return p
    snap = _hf_snapshot(_hf_hub_cache())
    if snap is not None:
        return snap
    raise _not_found("No CLIP vocabulary found.")


def load_tokenizer(vocab: Optional[PathLike] = None, embedded: Optional[str] = None) -> CLIPTokenizer:
    """The tokenizer for a model: ``vocab`` path first, then the ``embedded`` metadata
    string of a converted file, then ``ASYMVQ_CLIP_VOCAB``, then the Hugging Face cache."""
    if vocab is None and embedded is not None:
        return CLIPTokenizer.from_metadata(embedded)
    return CLIPTokenizer.from_file(find_vocab(vocab))


def throughput(tokenizer: CLIPTokenizer, prompts: Sequence[str]) -> float:
    """Prompts per second of one ``tokenizer(prompts)`` call (wall clock)."""
    start = time.perf_counter()
    tokenizer(prompts)
    return len(prompts) / (time.perf_counter() - start)
