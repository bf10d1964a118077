"""Test-only CLIP tokenizer reference material: vocabulary files, a prompt corpus, recorded ids.

* :func:`write_hf_files` writes transformers-style ``vocab.json`` + ``merges.txt`` derived
  from OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` (../shared/data/clip/), which is what
  openai/clip-vit-large-patch14's tokenizer files are: merges.txt holds a header and the
  first 48,894 merge rules; vocab.json maps 49,408 tokens to ids in this order: the 256
  byte characters, the same with ``</w>``, one token per merge rule (its halves joined),
  ``<|startoftext|>``, ``<|endoftext|>`` (SPEC §1.1). Written independently of
  ``asymvq.tokenizer`` so the two check each other.
* :func:`varied_prompts` generates a deterministic corpus of awkward prompts.
* ``python tests/reference/clip_vocab.py record OUT.json.gz`` records the ids of
  transformers' original Python ("slow") ``CLIPTokenizer`` -- the class SD v1 used -- for
  such a corpus. transformers >= 5 no longer has that class, so this runs in a separate
  environment, e.g.::

      python3.11 -m venv /tmp/ref && /tmp/ref/bin/pip install transformers==4.57.6 \\
          ftfy==6.3.1 regex==2026.11.19
      /tmp/ref/bin/python tests/reference/clip_vocab.py record tests/data/prompts_clip_slow_reference.json.gz

  (4.57.6 is the last 4.x release; its slow CLIPTokenizer gives the same ids as 4.19.2,
  the version SD v1's environment pinned, on this corpus and on 120,000 fuzzed prompts.)
  Only this module, the standard library and that environment are needed.
"""

from __future__ import annotations

import gzip
import json
import random
import unicodedata
from pathlib import Path
from typing import Callable, Dict, List, Tuple

BPE_GZ = Path(__file__).resolve().parents[3] / "shared" / "data" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
RECORDED = Path(__file__).resolve().parents[1] / "data" / "prompts_clip_slow_reference.json.gz"
NUM_MERGES = 48894


# ------------------------------------------------------------------ vocabulary files


def byte_characters() -> List[str]:
    """The 256 byte characters in vocabulary order (printable bytes, then the others)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def read_merges(gz_path: Path = BPE_GZ) -> List[Tuple[str, str]]:
    """The first 48,894 merge rules of the OpenAI file (its first line is a header)."""
    lines = gzip.decompress(Path(gz_path).read_bytes()).decode("utf-8").split("\n")
    return [tuple(line.split(" ")) for line in lines[1 : NUM_MERGES + 1]]  # type: ignore[misc]


def build_vocab(merges: List[Tuple[str, str]]) -> Dict[str, int]:
    """Token -> id in CLIP's order."""
    chars = byte_characters()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


def write_hf_files(out_dir: Path, gz_path: Path = BPE_GZ) -> Tuple[Path, Path]:
    """Write vocab.json and merges.txt into ``out_dir``; returns their paths."""
    merges = read_merges(gz_path)
    vocab = build_vocab(merges)
    if len(vocab) != 49408:
        raise ValueError(f"{gz_path}: derived vocabulary has {len(vocab)} tokens, expected 49408")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = out_dir / "vocab.json", out_dir / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_path.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return vocab_path, merges_path


# ---------------------------------------------------------------------- prompt corpus

_WORDS = (
    "a photo of an astronaut riding horse on mars highly detailed portrait woman man cat dog castle "
    "landscape sunset oil painting by greg rutkowski trending artstation octane render cinematic "
    "lighting beautiful intricate elegant concept art sharp focus illustration the in with and "
    "bokeh golden hour studio ghibli cyberpunk city neon rain reflections watercolor sketch "
    "unreal engine volumetric fog masterpiece best quality ultra realistic photorealistic "
    "empty scene highest settings dramatic sky mountains lake forest fantasy dragon knight "
    "steampunk robot futuristic vintage kodak portra film grain macro shot close-up wide angle "
    "symmetrical face hyperdetailed dslr soft light rim light moody atmospheric epic scale"
).split()
_CONTRACTIONS = [
    "it's",
    "don't",
    "they're",
    "we've",
    "I'm",
    "you'll",
    "he'd",
    "IT'S",
    "O'Neil",
    "rock'n'roll",
    "'til",
    "ma'am",
    "y'all",
    "can't",
    "won't",
    "she'd've",
    "'re",
    "''s",
]
_NUMBERS = [
    "4k",
    "8k",
    "1920x1080",
    "3.5",
    "2023",
    "v1.5",
    "#ff00aa",
    "50%",
    "$9.99",
    "f/1.8",
    "1/250s",
    "35mm",
    "100",
    "0.001",
    "1,000,000",
    "-12",
    "+3",
    "10e-5",
    "24fps",
    "iso800",
]
_SEPARATORS = [" ", ", ", " | ", "; ", ". ", " - ", " / ", ": ", "! ", "? ", " :: ", " + "]
_PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
_EMOJI = [
    "🤖",
    "👩‍🚀",
    "🇫🇷",
    "👍🏽",
    "❤️",
    "🔥",
    "😀",
    "🐱",
    "🌅",
    "1️⃣",
    "👨‍👩‍👧‍👦",
    "✨",
    "🏳️‍🌈",
    "☕",
    "⭐",
    "🎨",
    "🖼️",
    "📷",
    "🦄",
    "🌸",
    "🍕",
    "💩",
    "🙏🏿",
    "🧑🏻‍💻",
    "©️",
    "®",
    "™️",
    "🫠",
]
_WHITESPACE = [
    "\t",
    "\n",
    "\r\n",
    "\r",
    "\xa0",
    "\u3000",
    "\u2028",
    "\u2029",
    "\x85",
    "\u200b",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x1f",
    "\u2003",
    "\u202f",
    "\u205f",
    "\u1680",
    "\ufeff",
    "  ",
    "   ",
    " \t \n ",
]
_ENTITIES = [
    "&amp;",
    "&lt;",
    "&gt;",
    "&quot;",
    "&apos;",
    "&#39;",
    "&#x27;",
    "&#8217;",
    "&nbsp;",
    "&eacute;",
    "&EACUTE;",
    "&hellip;",
    "&mdash;",
    "&copy;",
    "&checkmark;",
    "&amp;amp;",
    "&notanentity;",
    "& amp;",
    "&#xZZ;",
    "&#128512;",
    "&Ntilde;",
    "&nTILDE;",
    "&SZLIG;",
    "&lt;3",
    "&AMP;",
    "&#0;",
    "&#x1F600;",
    "&frac12;",
    "&",
    "&&",
    "&;",
]
_QUOTES = ["‘", "’", "“", "”", "‚", "„", "‹", "›", "«", "»", "ʼ", "′", "″", "‛", "‟", "`", "´"]
_SCRIPTS = [
    "καλημέρα κόσμε",
    "ΚΑΛΗΜΕΡΑ",
    "привет мир",
    "ПРИВЕТ",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "გამარჯობა",
    "Բարեւ",
    "안녕하세요 세계",
    "こんにちは世界",
    "你好，世界！",
    "東京タワー",
    "ｳｫｰﾀｰ",
    "Tiếng Việt",
    "Ελληνικά",
    "Ὀδυσσεύς",
    "ǅemal",
    "İstanbul",
    "straße",
    "STRASSE",
    "ẞ",
    "ﬁne ﬂour ﬀ ﬃ ﬅ",
    "ℌ ℵ ℃ ™ №",
    "𝐀𝐁𝐂 𝔸𝔹",
    "Ⅻ ⅻ",
    "½ ¼ ¾ ⅓",
    "² ³ ¹ ⁴",
    "① ② ⑳",
    "٠١٢٣ ۴۵",
    "३४५",
    "๓๔",
    "𝟘𝟙𝟚",
    "x² + y² = z²",
    "∑∫√∞≠≈",
    "← → ↑ ↓",
    "♠♣♥♦",
    "…",
    "—–-",
    "•·",
    "§¶†‡",
    "€£¥₹₿",
    "°C",
    "Å Å",
    "K K",
    "ΟΔΟΣ ΣΑΣ",
    "ἈΣ.",
]
_SPECIALS = [
    "<|startoftext|>",
    "<|endoftext|>",
    "<|ENDOFTEXT|>",
    "<|StartOfText|>",
    "<|endoftext",
    "|endoftext|>",
    "<|end|>",
    "<||>",
    "< |endoftext| >",
    "<|startoftext|><|endoftext|>",
]
_MOJIBAKE_SOURCES = [
    "café",
    "naïve résumé",
    "“quoted”",
    "it’s",
    "über",
    "Zürich",
    "smile 😀",
    "東京",
    "crème brûlée",
    "señor",
    "—dash—",
    "…",
    "© 2023",
    "½ price",
    "Ångström",
    "fiancée",
    "déjà vu",
    "São Paulo",
    "Kraków",
    "İzmir",
]

EDGE_CASES = [
    "",
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "\xa0",
    "\u3000",
    " \t\n\r\x0b\x0c\xa0\u3000\u2028 ",
    "a",
    "A",
    "'s",
    "'S",
    "it's",
    "IT'S",
    "'ſ",
    "x'ſ",
    "<|ſtartoftext|>",
    "1234567890",
    "3.14159",
    "<|startoftext|>",
    "<|endoftext|>",
    "<|ENDOFTEXT|>",
    "a<|endoftext|>b",
    "<|endoftext|> x",
    "x\x85<|endoftext|>",
    "<|endoftext|>\x85x",
    "<|startoftext|>" * 80,
    "a " * 76,
    "a " * 75,
    "a " * 74,
    "🤖" * 80,
    "photograph of a beautiful empty scene, highest quality settings",
    "ΟΔΟΣ",
    "ΣΑΣ ΣΑΣ.",
    "Σ",
    "İ",
    "ǅ",
    "ẞ",
    "ﬅ",
    "&amp;",
    "&lt;b&gt;",
    "<b>&amp;</b>",
    "a\nb<\n&amp;",
    "&amp;\n<",
    "\ud83d\ude00",
    "\udc00x",
    "cafe\u0301",
    "\u0301",
    "\U000e0041",
    "ma\u0345n",
    "\u0345",
]


def _word(rng: random.Random) -> str:
    return rng.choice(_WORDS)


def _ascii(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 22)):
        r = rng.random()
        w = _word(rng) if r < 0.7 else rng.choice(_CONTRACTIONS) if r < 0.8 else rng.choice(_NUMBERS)
        if rng.random() < 0.15:
            w = w.upper() if rng.random() < 0.5 else w.capitalize()
        if rng.random() < 0.08:
            w = "(" * rng.randint(1, 3) + w + ")" * rng.randint(1, 3)
        if rng.random() < 0.05:
            w = "[" + w + ":" + _word(rng) + ":0." + str(rng.randint(1, 9)) + "]"
        parts += [w, rng.choice(_SEPARATORS)]
    return "".join(parts[:-1])


def _punctuation_and_numbers(rng: random.Random) -> str:
    alphabet = _PUNCT + "0123456789" + "abcXYZ" + " " * 6
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))


def _mix(rng: random.Random, pool: List[str], n_max: int = 12, word_p: float = 0.5) -> str:
    out = []
    for _ in range(rng.randint(1, n_max)):
        out += [_word(rng) if rng.random() < word_p else rng.choice(pool), rng.choice([" ", "", ", "])]
    return "".join(out)


def _emoji(rng: random.Random) -> str:
    return _mix(rng, _EMOJI)


def _cjk(rng: random.Random) -> str:
    ranges = [
        (0x4E00, 0x9FFF),
        (0x3041, 0x3096),
        (0x30A1, 0x30FA),
        (0xAC00, 0xD7A3),
        (0x3000, 0x303F),
        (0xFF01, 0xFF5E),
        (0x3400, 0x4DBF),
        (0x20000, 0x2A6DF),
    ]
    out = []
    for _ in range(rng.randint(1, 10)):
        lo, hi = rng.choice(ranges)
        out.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8))))
        out.append(rng.choice(["", " ", "，", "。", " a ", _word(rng)]))
    return "".join(out)


def _accents_and_combining_marks(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 10)):
        w = list(_word(rng))
        for i in range(len(w)):
            r = rng.random()
            if r < 0.15:
                w[i] = chr(rng.randint(0xC0, 0x17F))
            elif r < 0.3:
                w[i] += "".join(chr(rng.randint(0x300, 0x36F)) for _ in range(rng.randint(1, 3)))
        if rng.random() < 0.1:
            w.insert(0, chr(rng.randint(0x300, 0x36F)))
        out.append("".join(w))
    return rng.choice([" ", ", "]).join(out)


def _html_entities(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 10)):
        out += [rng.choice(_ENTITIES) if rng.random() < 0.5 else _word(rng), rng.choice([" ", "", "\n"])]
    if rng.random() < 0.2:  # a '<' turns ftfy's entity decoding off for the rest of the text
        out.insert(rng.randrange(len(out) + 1), rng.choice(["<", "<b>", "a < b"]))
    return "".join(out)


def _whitespace_runs(rng: random.Random) -> str:
    out = [rng.choice(_WHITESPACE) if rng.random() < 0.5 else ""]
    for _ in range(rng.randint(0, 8)):
        if rng.random() < 0.8:
            out.append(_word(rng))
        out.append("".join(rng.choice(_WHITESPACE) for _ in range(rng.randint(1, 4))))
    return "".join(out)


def _longer_than_77_tokens(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.5:
        return " ".join(_word(rng) for _ in range(rng.randint(60, 300)))
    if kind < 0.7:
        return "".join(rng.choice(_EMOJI) for _ in range(rng.randint(40, 120)))
    if kind < 0.85:
        return "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(rng.randint(40, 200)))
    return ", ".join(_ascii(rng) for _ in range(8))


def _special_token_literals(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 6)):
        out.append(rng.choice(_SPECIALS) if rng.random() < 0.5 else _word(rng))
        out.append(rng.choice(["", " ", "  ", "\n", "\x85", "\xa0", "é", "Ã©"]))
    return "".join(out)


def _mojibake(rng: random.Random) -> str:
    s = rng.choice(_MOJIBAKE_SOURCES)
    if rng.random() < 0.5:
        s = s + " " + _word(rng) + " " + rng.choice(_MOJIBAKE_SOURCES)
    data = s.encode("utf-8")
    encoding = rng.choice(["latin-1", "cp1252", "cp1252", "macroman", "cp437"])
    try:
        bad = data.decode(encoding)
    except UnicodeDecodeError:
        bad = data.decode("latin-1")
    if rng.random() < 0.2:  # double mojibake
        try:
            bad = bad.encode("utf-8").decode("cp1252")
        except UnicodeDecodeError:
            pass
    return rng.choice(["", _word(rng) + " "]) + bad + rng.choice(["", " " + _word(rng)])


def _curly_quotes(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 8)):
        w = _word(rng) if rng.random() < 0.7 else rng.choice(["it", "don", "they", "we", "I", "you"])
        if rng.random() < 0.5:
            out.append(rng.choice(_QUOTES) + w + rng.choice(_QUOTES))
        else:
            out.append(w + rng.choice(_QUOTES) + rng.choice(["s", "t", "re", "ve", "m", "ll", "d"]))
    return " ".join(out)


def _full_width(rng: random.Random) -> str:
    def widen(c: str) -> str:
        if "!" <= c <= "~" and rng.random() < 0.8:
            return chr(ord(c) + 0xFEE0)
        return "\u3000" if c == " " and rng.random() < 0.5 else c

    return "".join(widen(c) for c in _ascii(rng))


def _scripts_and_numerals(rng: random.Random) -> str:
    return _mix(rng, _SCRIPTS, n_max=6, word_p=0.3)


def _control_characters(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 8)):
        out.append(_word(rng))
        r = rng.random()
        if r < 0.4:
            out.append(chr(rng.randint(0, 0x1F)))
        elif r < 0.6:
            out.append(chr(rng.randint(0x7F, 0x9F)))
        elif r < 0.7:
            out.append("\x1b[3" + str(rng.randint(0, 7)) + "m")
        else:
            out.append(rng.choice(["\u200d", "\u200e", "\u202e", "\u2066", "\u206a", "\ufffc", "\ufffd", " "]))
    return "".join(out)


def _assigned_code_points(rng: random.Random) -> str:
    """Random assigned, non-private code points of the BMP and the SMP, with spaces."""
    out: List[str] = []
    length = rng.randint(1, 40)
    while len(out) < length:
        c = chr(rng.randint(0x20, 0x1FFFF))
        if unicodedata.category(c) not in ("Cn", "Cs", "Co"):
            out.append(c if rng.random() < 0.85 else " ")
    return "".join(out)


CATEGORIES: List[Callable[[random.Random], str]] = [
    _ascii,
    _punctuation_and_numbers,
    _emoji,
    _cjk,
    _accents_and_combining_marks,
    _html_entities,
    _whitespace_runs,
    _longer_than_77_tokens,
    _special_token_literals,
    _mojibake,
    _curly_quotes,
    _full_width,
    _scripts_and_numerals,
    _control_characters,
    _assigned_code_points,
]


def varied_prompts(n: int = 2400, seed: int = 1234) -> List[str]:
    """:data:`EDGE_CASES` then generated prompts, cycling through :data:`CATEGORIES`."""
    rng = random.Random(seed)
    prompts = list(EDGE_CASES)
    while len(prompts) < n:
        prompts.append(CATEGORIES[len(prompts) % len(CATEGORIES)](rng))
    return prompts


# ------------------------------------------------------------------ recorded reference


def record(out_path: Path, n: int = 3000, seed: int = 2022) -> None:
    """Record transformers' slow CLIPTokenizer ids for ``varied_prompts(n, seed)``.

    Each row is stored without its trailing 49407s (padding, EOS); :func:`load_recorded`
    pads it back to 77, which restores it exactly.
    """
    import importlib.metadata as md
    import tempfile

    import transformers  # the reference environment's, never asymvq's

    with tempfile.TemporaryDirectory() as tmp:
        write_hf_files(Path(tmp))
        tok = transformers.CLIPTokenizer.from_pretrained(tmp, local_files_only=True)
    if not hasattr(tok, "bpe") or getattr(tok, "fix_text", None) is None:
        raise RuntimeError("need transformers < 5 (slow CLIPTokenizer) with ftfy installed")
    prompts = varied_prompts(n, seed)
    rows = []
    for p in prompts:
        row = tok(p, truncation=True, max_length=77, padding="max_length")["input_ids"]
        if len(row) != 77:
            raise RuntimeError(f"reference returned {len(row)} ids for {p!r}")
        while row and row[-1] == 49407:
            row.pop()
        rows.append(row)
    versions = {name: md.version(name) for name in ("transformers", "ftfy", "regex")}
    versions["unicodedata"] = unicodedata.unidata_version
    data = {
        "reference": "transformers CLIPTokenizer (slow) called as SD v1 does: truncation=True, "
        "max_length=77, padding='max_length'; rows without trailing 49407",
        "versions": versions,
        "prompts": prompts,
        "input_ids": rows,
    }
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"))
    Path(out_path).write_bytes(gzip.compress(text.encode("ascii"), compresslevel=9, mtime=0))


def load_recorded(path: Path = RECORDED) -> dict:
    """The recorded reference: ``versions``, ``prompts`` and ``input_ids`` (rows of 77)."""
    data = json.loads(gzip.decompress(Path(path).read_bytes()).decode("ascii"))
    data["input_ids"] = [row + [49407] * (77 - len(row)) for row in data["input_ids"]]
    return data


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "record":
        record(Path(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "vocab":
        print(*write_hf_files(Path(sys.argv[2])), sep="\n")
    else:
        sys.exit("usage: clip_vocab.py record OUT.json.gz | vocab OUT_DIR")
