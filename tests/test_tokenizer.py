"""asymvq.tokenizer: SD v1's CLIP token ids (SPEC §1.1) and where the vocabulary comes from.

References:
* recorded ids of transformers' original Python ``CLIPTokenizer`` (the class SD v1 used;
  transformers >= 5 no longer has it): tests/data/prompts_clip_slow_reference.json.gz,
  made by ``tests/reference/clip_vocab.py record``;
* the installed transformers ``CLIPTokenizer`` (tokenizers-backed since transformers 5),
  built offline from vocab.json + merges.txt derived from the same vocabulary, with the
  ``ftfy`` cleanup the slow class applied and the fast class lacks, on inputs where the
  two classes agree (see :func:`_fast_class_differs`).
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import List

import ftfy
import numpy as np
import pytest
import regex
import transformers
from reference import clip_vocab

from asymvq import tokenizer as T
from asymvq.tokenizer import CLIPTokenizer, VocabNotFoundError, find_vocab, load_tokenizer

BOS, EOS = 49406, 49407


@pytest.fixture(scope="module")
def tok() -> CLIPTokenizer:
    return CLIPTokenizer.from_file(clip_vocab.BPE_GZ)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clip_vocab")
    clip_vocab.write_hf_files(out)
    return out


def _row(content: List[int]) -> List[int]:
    return [BOS] + content + [EOS] * (76 - len(content))


def _mismatches(prompts, got, want, limit=5) -> str:
    bad = np.nonzero(~(np.asarray(got) == np.asarray(want)).all(axis=1))[0]
    lines = [f"{len(bad)} of {len(prompts)} prompts differ"]
    for i in bad[:limit]:
        lines.append(
            f"{prompts[i]!r:.120}\n  want {np.asarray(want)[i].tolist()}\n  got  {np.asarray(got)[i].tolist()}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ parity


def test_ids_equal_recorded_slow_transformers_tokenizer(tok):
    data = clip_vocab.load_recorded()
    prompts, want = data["prompts"], np.array(data["input_ids"], dtype=np.int64)
    assert len(prompts) >= 2000
    got = tok(prompts)
    assert np.array_equal(got, want), (
        _mismatches(prompts, got, want) + f"\nrecorded with {data['versions']}; installed ftfy "
        f"{ftfy.__version__}, regex {regex.__version__} (their Unicode tables and fixes may differ)"
    )


_SPECIAL_SPLIT = re.compile(r"(<\|startoftext\|>|<\|endoftext\|>)")
# Sequences of the cleaned, lowercased text that the slow class tokenizes differently:
# U+0345 and "'ſ" (its pattern is case-insensitive) and special-token literals that only
# appear after lowercasing (it matches them after lowercasing, the fast class before).
_FAST_DIFFERS = re.compile("\u0345|'\u017f|<\\|[s\u017f]tartoftext\\|>|<\\|endoftext\\|>")


def _fast_class_differs(prompt: str) -> bool:
    """Inputs on which transformers 5's CLIPTokenizer differs from SD's slow one even after ftfy:
    lone surrogates (not representable in Rust strings), the sequences of _FAST_DIFFERS, and capital
    sigma (the fast class lowercases character by character, without Python's final-sigma rule)."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        return True
    pieces = [ftfy.fix_text(p) for p in _SPECIAL_SPLIT.split(prompt)[::2]]
    return any("Σ" in p or _FAST_DIFFERS.search(p.lower()) for p in pieces)


def _with_ftfy(prompt: str) -> str:
    return "".join(p if k % 2 else ftfy.fix_text(p) for k, p in enumerate(_SPECIAL_SPLIT.split(prompt)))


def test_ids_equal_installed_transformers_tokenizer_on_varied_prompts(tok, hf_dir):
    reference = transformers.CLIPTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    corpus = clip_vocab.varied_prompts(2400, seed=1234)
    prompts = [p for p in corpus if not _fast_class_differs(p)]
    assert len(prompts) >= 2000
    want = reference([_with_ftfy(p) for p in prompts], truncation=True, max_length=77, padding="max_length")[
        "input_ids"
    ]
    got = tok(prompts)
    assert np.array_equal(got, np.array(want)), _mismatches(prompts, got, want)


def test_vocab_files_and_gz_give_identical_ids(tok, hf_dir):
    prompts = clip_vocab.varied_prompts(600, seed=7)
    from_dir = CLIPTokenizer.from_file(hf_dir)
    from_pair = CLIPTokenizer.from_file((hf_dir / "vocab.json", hf_dir / "merges.txt"))
    want = tok(prompts)
    assert np.array_equal(from_dir(prompts), want)
    assert np.array_equal(from_pair(prompts), want)


def test_uncompressed_vocab_file_gives_identical_ids(tok, tmp_path):
    txt = tmp_path / "bpe_simple_vocab_16e6.txt"
    txt.write_bytes(gzip.decompress(clip_vocab.BPE_GZ.read_bytes()))
    prompts = clip_vocab.varied_prompts(300, seed=8)
    assert np.array_equal(CLIPTokenizer.from_file(txt)(prompts), tok(prompts))


def test_merges_txt_alone_gives_identical_ids(tok, hf_dir):
    prompts = clip_vocab.varied_prompts(300, seed=9)
    assert np.array_equal(CLIPTokenizer.from_file(hf_dir / "merges.txt")(prompts), tok(prompts))


# ------------------------------------------------------------- SPEC §1.1


def test_empty_prompt_is_bos_then_76_eos(tok):
    assert tok("").tolist() == [[BOS] + [EOS] * 76]


def test_whitespace_only_prompt_is_the_empty_prompt(tok):
    assert tok(" \t\n\r\xa0\u3000\u2028 ").tolist() == tok("").tolist()


def test_output_is_int64_batch_by_77(tok):
    out = tok(["a cat", "", "a dog on the moon"])
    assert out.dtype == np.int64 and out.shape == (3, 77)
    assert tok("a cat").shape == (1, 77)
    assert tok([]).shape == (0, 77)


def test_known_prompt_ids(tok):
    # ids of transformers' CLIPTokenizer for openai/clip-vit-large-patch14
    assert tok("a photo of a cat")[0].tolist() == _row([320, 1125, 539, 320, 2368])


def test_digits_are_split_one_token_each(tok):
    assert tok.encode("2023") == tok.encode("2 0 2 3")
    assert len(tok.encode("2023")) == 4


def test_apostrophe_suffixes_are_separate_tokens(tok):
    for word, stem, suffix in [
        ("it's", "it", "'s"),
        ("don't", "don", "'t"),
        ("they're", "they", "'re"),
        ("we've", "we", "'ve"),
        ("i'm", "i", "'m"),
        ("you'll", "you", "'ll"),
        ("he'd", "he", "'d"),
    ]:
        assert tok.encode(word) == tok.encode(stem) + tok.encode(suffix), word
    assert tok.encode("IT'S") == tok.encode("it's")


def test_text_is_lowercased_with_pythons_rules(tok):
    assert tok.encode("A Photo OF a CAT") == tok.encode("a photo of a cat")
    assert tok.encode("ΟΔΟΣ") == tok.encode("οδος")  # final sigma


def test_truncation_keeps_75_content_tokens_and_ends_with_eos(tok):
    row = tok("a " * 100)[0].tolist()
    assert row == [BOS] + tok.encode("a") * 75 + [EOS]


def test_75_content_tokens_fit_and_the_76th_is_dropped(tok):
    assert tok("a " * 75)[0].tolist() == tok("a " * 76)[0].tolist()
    assert tok("a " * 74)[0].tolist() != tok("a " * 75)[0].tolist()


def test_special_token_literals_become_special_ids(tok):
    a, b = tok.encode("a"), tok.encode("b")
    assert tok.encode("a<|endoftext|>b") == a + [EOS] + b
    assert tok.encode("a <|startoftext|> b") == a + [BOS] + b
    assert tok.encode("a<|ENDOFTEXT|>b") == a + [EOS] + b  # matched again after lowercasing


def test_ftfy_cleans_text_before_tokenizing(tok):
    assert tok.encode("cafÃ©") == tok.encode("café")  # mojibake
    assert tok.encode("salt &amp; pepper") == tok.encode("salt & pepper")  # HTML entity
    assert tok.encode("“it’s”") == tok.encode('"it\'s"')  # curly quotes
    assert tok.encode("ＬＯＵＤ　ＮＯＩＳＥ") == tok.encode("loud noise")  # full width
    assert tok.encode("ﬁne") == tok.encode("fine")  # ligature
    assert tok.encode("cafe\u0301") == tok.encode("caf\u00e9")  # NFC


def test_non_string_prompt_is_rejected_by_index(tok):
    with pytest.raises(TypeError, match=r"prompts\[1\]"):
        tok(["a cat", 3])


def test_vocab_has_49408_ids(tok):
    assert tok.vocab_size == 49408


# ---------------------------------------------------------------- files


def test_merges_file_without_header_is_rejected(tmp_path):
    bad = tmp_path / "merges.txt"
    bad.write_text("i n\nt h\n", encoding="utf-8")
    with pytest.raises(ValueError, match="#version"):
        CLIPTokenizer.from_file(bad)


def test_merges_file_with_too_few_rules_is_rejected():
    with pytest.raises(ValueError, match="48894"):
        CLIPTokenizer.from_merges_text("#version: 0.2\ni n\nt h\n")


def test_vocab_json_without_merges_txt_is_rejected(tmp_path, hf_dir):
    (tmp_path / "vocab.json").write_bytes((hf_dir / "vocab.json").read_bytes())
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        CLIPTokenizer.from_file(tmp_path)


def test_metadata_round_trip_gives_identical_ids(tok):
    meta = tok.to_metadata()
    assert meta.startswith(T.METADATA_PREFIX) and meta.isascii()
    assert meta == CLIPTokenizer.from_file(clip_vocab.BPE_GZ).to_metadata()  # deterministic
    prompts = clip_vocab.varied_prompts(300, seed=10)
    assert np.array_equal(CLIPTokenizer.from_metadata(meta)(prompts), tok(prompts))


def test_foreign_metadata_is_rejected():
    with pytest.raises(ValueError, match=re.escape(T.METADATA_PREFIX)):
        CLIPTokenizer.from_metadata('{"format": "pt"}')


# ---------------------------------------------------------- vocabulary resolution


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No ASYMVQ_CLIP_VOCAB and an empty Hugging Face cache."""
    monkeypatch.delenv(T.ENV_VAR, raising=False)
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    return tmp_path


def _hf_snapshot(hf_home: Path, hf_dir: Path, commit: str = "abc123") -> Path:
    repo = hf_home / "hub" / "models--openai--clip-vit-large-patch14"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name in ("vocab.json", "merges.txt"):
        (snap / name).symlink_to(hf_dir / name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


def test_explicit_path_comes_first(clean_env, monkeypatch, hf_dir):
    _hf_snapshot(clean_env / "hf_home", hf_dir)
    monkeypatch.setenv(T.ENV_VAR, str(hf_dir))
    assert find_vocab(clip_vocab.BPE_GZ) == clip_vocab.BPE_GZ


def test_environment_variable_comes_before_the_cache(clean_env, monkeypatch, hf_dir):
    _hf_snapshot(clean_env / "hf_home", hf_dir)
    monkeypatch.setenv(T.ENV_VAR, str(clip_vocab.BPE_GZ))
    assert find_vocab() == clip_vocab.BPE_GZ


def test_hugging_face_cache_snapshot_is_found(clean_env, hf_dir):
    snap = _hf_snapshot(clean_env / "hf_home", hf_dir)
    assert find_vocab() == snap
    assert CLIPTokenizer.from_file(find_vocab())("a cat").tolist() == [_row([320, 2368])]


def test_hf_hub_cache_variable_overrides_hf_home(clean_env, monkeypatch, hf_dir):
    snap = _hf_snapshot(clean_env / "elsewhere", hf_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(clean_env / "elsewhere" / "hub"))
    assert find_vocab() == snap


def test_missing_explicit_path_is_an_error_naming_it(clean_env, hf_dir):
    _hf_snapshot(clean_env / "hf_home", hf_dir)
    with pytest.raises(VocabNotFoundError, match="no_such_vocab.gz"):
        find_vocab(clean_env / "no_such_vocab.gz")


def test_missing_environment_path_is_an_error_naming_the_variable(clean_env, monkeypatch, hf_dir):
    _hf_snapshot(clean_env / "hf_home", hf_dir)
    monkeypatch.setenv(T.ENV_VAR, str(clean_env / "gone"))
    with pytest.raises(VocabNotFoundError, match=T.ENV_VAR):
        find_vocab()


def test_no_vocabulary_error_lists_every_option(clean_env):
    with pytest.raises(VocabNotFoundError) as info:
        find_vocab()
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    for option in (
        "explicit path",
        "bpe_simple_vocab_16e6.txt.gz",
        "vocab.json + merges.txt",
        T.ENV_VAR,
        "Hugging Face cache of openai/clip-vit-large-patch14",
        str(clean_env / "hf_home" / "hub"),
        "python -m asymvq convert --tokenizer",
    ):
        assert option in message, option


def test_load_tokenizer_prefers_explicit_then_embedded_then_environment(clean_env, monkeypatch, tok):
    embedded = tok.to_metadata()
    monkeypatch.setenv(T.ENV_VAR, str(clean_env / "gone"))
    assert load_tokenizer(embedded=embedded)("a cat").tolist() == [_row([320, 2368])]  # env not consulted
    with pytest.raises(VocabNotFoundError, match="not_here"):
        load_tokenizer(clean_env / "not_here", embedded=embedded)
    with pytest.raises(VocabNotFoundError, match=T.ENV_VAR):
        load_tokenizer()
