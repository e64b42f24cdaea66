import hashlib
import os
import subprocess
import sys
import textwrap

import pytest

from zoo import tokenizer as ztok
from zoo.tokenizer import BOS, build_local_tokenizer, corpus_key

CORPUS = [
    "Which plane is this CT image in?",
    "Find the liver and give its coordinates.",
    "<bx_start>[0.125, 0.5, 0.0, 0.875, 1.0, 0.333]<bx_end>",
    "The target is the left kidney.",
    "Is there an abnormality in the spleen? No.",
    "A. Axial",
] * 4

ANSWERS = [
    "<bx_start>[0.125, 0.5, 0.0, 0.875, 1.0, 0.333]<bx_end>",
    "<bx_start>[0.031, 0.094, 0.969, 0.062, 0.5, 0.999]<bx_end>",
    "The target is the right kidney.",
    "B. Coronal",
    "Yes, see [SEG].",
    "unseen wörds, tabs\tand  double  spaces 12.75 mm",
]


def test_roundtrip_is_lossless(tmp_path):
    tok = build_local_tokenizer(CORPUS, vocab_size=320, cache_dir=tmp_path)
    for text in ANSWERS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
        assert tok.unk_token_id not in ids


def test_digits_are_single_tokens(tmp_path):
    tok = build_local_tokenizer(CORPUS, vocab_size=320, cache_dir=tmp_path)
    pieces = tok.convert_ids_to_tokens(tok("0.125", add_special_tokens=False)["input_ids"])
    assert pieces == ["0", ".", "1", "2", "5"]


def test_bos_is_prepended_unless_disabled(tmp_path):
    with_bos = build_local_tokenizer(CORPUS, vocab_size=320, cache_dir=tmp_path)
    without = build_local_tokenizer(CORPUS, vocab_size=320, cache_dir=tmp_path, add_bos=False)
    ids = with_bos("liver")["input_ids"]
    assert ids[0] == with_bos.convert_tokens_to_ids(BOS)
    assert without("liver")["input_ids"] == ids[1:]
    assert {with_bos.bos_token, with_bos.eos_token, with_bos.pad_token, with_bos.unk_token} == {
        "<s>", "</s>", "<pad>", "<unk>"}


def test_same_corpus_same_vocab_and_cache_is_reused(tmp_path, monkeypatch):
    first = build_local_tokenizer(CORPUS, vocab_size=320, cache_dir=tmp_path / "a")
    second = build_local_tokenizer(CORPUS, vocab_size=320, cache_dir=tmp_path / "b")
    assert first.get_vocab() == second.get_vocab()
    cached = list((tmp_path / "a").glob("bpe-*/tokenizer.json"))
    assert len(cached) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the cache holds this corpus")

    monkeypatch.setattr(ztok, "_train", no_training)
    third = build_local_tokenizer(CORPUS, vocab_size=320, cache_dir=tmp_path / "a")
    assert third.get_vocab() == first.get_vocab()
    with pytest.raises(AssertionError, match="trained again"):
        build_local_tokenizer(CORPUS + ["a new text"], vocab_size=320, cache_dir=tmp_path / "a")


def test_key_depends_on_corpus_order_framing_and_settings():
    base = corpus_key(["ab", "c"], {"vocab_size": 300})
    assert base == corpus_key(["ab", "c"], {"vocab_size": 300})
    assert base != corpus_key(["a", "bc"], {"vocab_size": 300})
    assert base != corpus_key(["c", "ab"], {"vocab_size": 300})
    assert base != corpus_key(["ab", "c"], {"vocab_size": 301})


def test_training_is_deterministic_across_processes():
    """Rust hash maps are seeded per process: train in two fresh processes and compare."""
    # load the module by path: `import zoo` would pull in torch and take most of the time
    script = textwrap.dedent(f"""
        import hashlib, importlib.util
        spec = importlib.util.spec_from_file_location("ztok", {ztok.__file__!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        tok = module._train({CORPUS!r}, 320, 1)
        print(hashlib.sha256(tok.to_str().encode()).hexdigest())
    """)
    digests = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, check=True, timeout=120)
        digests.add(out.stdout.strip())
    local = hashlib.sha256(ztok._train(CORPUS, 320, 1).to_str().encode()).hexdigest()
    assert digests == {local}


@pytest.mark.parametrize("corpus,kwargs,error", [
    ([], {}, ValueError),
    ("one string", {}, TypeError),
    (["ok", 3], {}, TypeError),
    (["ok"], {"vocab_size": 100}, ValueError),
    (["ok"], {"min_frequency": 0}, ValueError),
])
def test_bad_arguments_raise(tmp_path, corpus, kwargs, error):
    with pytest.raises(error):
        build_local_tokenizer(corpus, cache_dir=tmp_path, **kwargs)
