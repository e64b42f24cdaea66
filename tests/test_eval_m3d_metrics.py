"""M3D's Bench metrics as coded, item by item, on hand-made cases.

Every expected value below is worked out from the rule in M3D's evaluation code (Bench/eval:
``evaluate``'s ``bleu`` / ``meteor`` / ``bertscore`` on one stripped pair at a time; Bench/utils:
``extract_box_from_text`` and ``calculate_iou``, -1 when a box is missing), stated next to it.
Tests that need WordNet skip with the reason when it is not installed; the others run anywhere.
"""

import math

import pytest
import torch

from zoo.boxes import box_iou_m3d, parse_box, parse_box_m3d
from zoo.errors import ConfigError, MissingFileError
from zoo.evaluation import grounding, text, wordnet

needs_wordnet = pytest.mark.skipif(
    not text.wordnet_available(),
    reason="WordNet not installed (apt-get install wordnet-base wordnet-sense-index)")


# ---------------------------------------------------------------- BLEU (evaluate, max_order=1)
@pytest.mark.parametrize("prediction, reference, expected", [
    # case kept: "Yes" and "yes" are different tokens, no unigram matches
    ("Yes", "yes", 0.0),
    # both sides stripped; one token, matched; equal lengths: brevity penalty 1
    ("yes", " yes ", 1.0),
    # 13a keeps "non-enhancing" (a dash is split only after a digit) and "3.5" (a period between
    # digits stays), splits the final "." off "cm": 7 tokens, 3 match; longer than the
    # reference: brevity penalty 1
    ("The lesion is non-enhancing 3.5 cm.", "non-enhancing 3.5 cm", 3 / 7),
    # 2 of 2 tokens match; brevity penalty exp(1 - r / c) with r = 4, c = 2
    ("the liver", "the liver is normal", math.exp(1 - 4 / 2)),
    # clipped counts: "the" occurs once in the reference, so 1 of 3 tokens counts
    ("the the the", "the cat", 1 / 3),
    # the comma is a token of its own: 2 of 3 match
    ("liver, spleen", "liver spleen", 2 / 3),
    # a dash after a digit is split off: both read T2 - weighted
    ("T2-weighted", "T2 - weighted", 1.0),
    # "&amp;" is unescaped, then "&" is a token
    ("a&amp;b", "a & b", 1.0),
    # an empty side: evaluate's BLEU divides by zero; the zoo scores 0 (see docs/evaluation.md)
    ("", "the liver", 0.0),
    ("the liver", "  ", 0.0),
])
def test_bleu_m3d_follows_evaluate_bleu_with_max_order_1(prediction, reference, expected):
    assert text.bleu_m3d(prediction, reference) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_bleu_m3d_differs_from_the_corrected_bleu1_where_the_issue_saw_it():
    # lower-cased tokens make the corrected BLEU-1 see a match that M3D's does not
    assert text.bleu("Yes", "yes", 1) == pytest.approx(1.0)
    assert text.bleu_m3d("Yes", "yes") == 0.0


# ---------------------------------------------------------------- METEOR (evaluate, nltk)
def test_m3d_words_are_nltk_word_tokenize():
    # Treebank-style words: hyphenated words and decimals stay whole, the final period is split
    assert text.m3d_words("The lesion is non-enhancing 3.5 cm.") == [
        "The", "lesion", "is", "non-enhancing", "3.5", "cm", "."]
    # Punkt ends a sentence after "normal." (no abbreviation), so its period is a token too
    assert text.m3d_words("The liver is normal. No lesion.") == [
        "The", "liver", "is", "normal", ".", "No", "lesion", "."]
    # the zoo's own tokens split both
    assert text.tokenize("non-enhancing 3.5") == ["non", "-", "enhancing", "3", ".", "5"]


def test_untrained_punkt_splitting_is_word_tokenize_with_an_empty_english_model(tmp_path,
                                                                              monkeypatch):
    """Without nltk's English Punkt model the zoo runs Punkt's rules with no trained
    parameters: the same as nltk's ``word_tokenize`` given an English model that lists nothing
    (so the English model's abbreviation list is the only difference)."""
    import nltk
    from nltk import tokenize as nltk_tokenize

    model = tmp_path / "tokenizers" / "punkt_tab" / "english"
    model.mkdir(parents=True)
    for name in ("collocations.tab", "sent_starters.txt", "abbrev_types.txt",
                 "ortho_context.tab"):
        (model / name).write_text("")
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)] + list(nltk.data.path))
    monkeypatch.setattr(text, "punkt_english_available", lambda: False)
    nltk_tokenize._get_punkt_tokenizer.cache_clear()
    try:
        for sample in ("The liver is normal. No lesion seen on CT. Kidneys: 2 cysts, 3.5 cm.",
                       "Dr. Smith saw a 1. lesion... and J. Bach! Really? yes.",
                       "non-enhancing 3.5 cm"):
            assert text.m3d_words(sample) == nltk.word_tokenize(sample)
    finally:
        nltk_tokenize._get_punkt_tokenizer.cache_clear()


@needs_wordnet
@pytest.mark.parametrize("prediction, reference, expected", [
    # METEOR = Fmean * (1 - 0.5 * (chunks / matches)^3), Fmean = P R / (0.9 P + 0.1 R).
    # 7 tokens against 3, all 3 reference words matched exactly, in 2 chunks (non-enhancing;
    # 3.5 cm): P = 3/7, R = 1 -> Fmean = 3 / 3.4; penalty 0.5 * (2/3)^3
    ("A non-enhancing lesion of 3.5 cm.", "non-enhancing 3.5 cm",
     (3 / 3.4) * (1 - 0.5 * (2 / 3) ** 3)),
    # nodule, in, the match exactly; thorax -> chest through WordNet (nltk looks synonyms up
    # for the words the Porter stemmer left unchanged: "thorax" and "chest" are their own stems)
    # 4 matches in 1 chunk: P = 4/5, R = 1 -> Fmean = 0.8 / 0.82; penalty 0.5 * (1/4)^3
    ("Nodule in the thorax.", "nodule in the chest", (0.8 / 0.82) * (1 - 0.5 / 64)),
    # METEOR lowercases: one match, one chunk: penalty 0.5
    ("Yes", "yes", 0.5),
    # two sentences each: 8 tokens per side (two periods), 7 match (No / A do not) in 2 chunks
    ("The liver is normal. No lesion.", "The liver is normal. A lesion.",
     (7 / 8) * (1 - 0.5 * (2 / 7) ** 3)),
    # nltk scores an empty side 0
    ("", "nodule", 0.0),
])
def test_meteor_m3d_per_item(prediction, reference, expected):
    assert text.meteor_m3d(prediction, reference) == pytest.approx(expected, rel=1e-12)


@needs_wordnet
def test_corrected_meteor_uses_wordnet_and_the_zoo_tokens():
    scores = text.text_scores("A non-enhancing lesion of 3.5 cm.", "non-enhancing 3.5 cm")
    assert "meteor" in scores and text.meteor_m3d_key() in scores
    assert scores["meteor"] != pytest.approx(scores[text.meteor_m3d_key()])  # other tokens
    assert text.meteor("nodule in the thorax", "nodule in the chest") == pytest.approx(
        (1 - 0.5 / 64))  # 4 of 4 matched (thorax ~ chest), one chunk


def test_without_wordnet_there_is_no_m3d_meteor_and_the_note_says_why(monkeypatch):
    monkeypatch.setattr(text, "wordnet_available", lambda: False)
    scores = text.text_scores("the cat sat", "the cat sat")
    assert "meteor_nosyn" in scores and "meteor" not in scores
    assert not any(k.startswith("meteor_m3d") for k in scores)
    assert "apt-get install wordnet-base" in text.text_notes()[0]
    with pytest.raises(MissingFileError, match="WordNet"):
        text.meteor_m3d("a", "a")


# ---------------------------------------------------------------- WordNet from Debian's files
def test_lexnames_is_the_45_line_wordnet_table_nltk_reads():
    lines = wordnet.lexnames_text().splitlines()
    assert len(lines) == 45
    for i, line in enumerate(lines):  # nltk's reader: three fields, line i carries number i
        number, name, category = line.split()
        assert int(number) == i and len(number) == 2
        assert int(category) == {"noun": 1, "verb": 2, "adj": 3, "adv": 4}[name.split(".")[0]]
    assert lines[0] == "00\tadj.all\t3" and lines[8] == "08\tnoun.body\t1"
    assert lines[29] == "29\tverb.body\t2" and lines[44] == "44\tadj.ppl\t3"


def test_build_nltk_wordnet_from_a_debian_layout(tmp_path):
    source = tmp_path / "debian"
    source.mkdir()
    for name in wordnet.DATABASE_FILES[:-1]:
        (source / name).write_text(name)
    with pytest.raises(MissingFileError, match="cntlist.rev.*apt-get install"):
        wordnet.build_nltk_wordnet(source, tmp_path / "nltk_data")
    (source / "cntlist.rev").write_text("")
    folder = wordnet.build_nltk_wordnet(source, tmp_path / "nltk_data")
    assert folder == tmp_path / "nltk_data" / "corpora" / "wordnet"
    assert sorted(p.name for p in folder.iterdir()) == sorted(wordnet.DATABASE_FILES
                                                              + ("lexnames",))
    assert not any(p.is_symlink() for p in folder.iterdir())  # nltk refuses links
    assert (folder / "data.noun").read_text() == "data.noun"
    assert wordnet.build_nltk_wordnet(source, tmp_path / "nltk_data") == folder  # built once


debian_wordnet = pytest.mark.skipif(
    not all((wordnet.debian_dir() / n).is_file() for n in wordnet.DATABASE_FILES),
    reason="Debian's WordNet not installed (apt-get install wordnet-base wordnet-sense-index)")


@debian_wordnet
def test_lexnames_agree_with_every_synset_of_debians_database():
    """Each synset line of data.* carries its lexicographer file number and its type (n, v, a,
    s, r): the name at that number must be of that syntactic category."""
    category = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}
    seen = set()
    for pos in ("adj", "adv", "noun", "verb"):
        with open(wordnet.debian_dir() / f"data.{pos}", encoding="utf-8") as f:
            for line in f:
                if line.startswith("  "):  # licence header
                    continue
                _, filenum, ss_type = line.split(" ", 3)[:3]
                assert wordnet.LEXNAMES[int(filenum)].split(".")[0] == category[ss_type], line
                seen.add(int(filenum))
    assert seen == set(range(45))


@debian_wordnet
def test_nltk_reads_the_built_folder(tmp_path, monkeypatch):
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)] + list(nltk.data.path))  # its sandbox
    folder = wordnet.build_nltk_wordnet(wordnet.debian_dir(), tmp_path)
    wn = WordNetCorpusReader(str(folder), None)
    assert wn.get_version() == "3.0"
    assert wn.synset("liver.n.01").lexname() == "noun.body"
    assert "chest" in {lemma.name() for s in wn.synsets("thorax") for lemma in s.lemmas()}


# ---------------------------------------------------------------- REC (Bench/utils.py)
ANSWER = "Coordinates are <bx_start>[0.200, 0.200, 0.200, 0.600, 0.600, 0.600]<bx_end>."
TARGET = [0.2, 0.2, 0.2, 0.6, 0.6, 0.6]


@pytest.mark.parametrize("output, m3d, zoo_iou", [
    # M3D's regex needs ", " between numbers: no box (-1); the zoo reads it (IoU 1)
    ("[0.2,0.2,0.2,0.6,0.6,0.6]", -1.0, 1.0),
    # a coordinate above 1: M3D keeps it; per axis overlap 0.4 x 0.4 x 0.4, enclosing box
    # 0.4 x 0.4 x 1.2 (plus 1e-6); the zoo refuses the box (0)
    ("[0.2, 0.2, 0.2, 0.6, 0.6, 1.4]", 0.064 / (0.192 + 1e-6), 0.0),
    # a negative coordinate: enclosing 0.8 x 0.4 x 0.4; the zoo refuses it
    ("[-0.2, 0.2, 0.2, 0.6, 0.6, 0.6]", 0.064 / (0.128 + 1e-6), 0.0),
    # "1." is neither M3D number form (digits.digits or digits): no box; the zoo reads 1.0 and
    # scores the true IoU 0.064 / 0.128
    ("[0.2, 0.2, 0.2, 1., 0.6, 0.6]", -1.0, 0.5),
    # an inverted box: M3D reads it, the overlap on x is max(0, 0.2 - 0.6) = 0; the zoo refuses it
    ("[0.6, 0.2, 0.2, 0.2, 0.6, 0.6]", 0.0, 0.0),
    # two spaces after a comma: no box for M3D
    ("[0.2,  0.2, 0.2, 0.6, 0.6, 0.6]", -1.0, 1.0),
    # no box at all: M3D -1, the zoo 0
    ("I cannot find it.", -1.0, 0.0),
    # M3D takes the first [a, b, c, d, e, f] anywhere, tagged or not
    ("see [0.2, 0.2, 0.2, 0.6, 0.6, 0.6] there", 0.064 / (0.064 + 1e-6), 1.0),
])
def test_rec_as_coded_and_corrected(output, m3d, zoo_iou):
    scores = grounding.rec_scores(output, TARGET, ANSWER)
    assert scores["iou_m3d"] == pytest.approx(m3d, rel=1e-9)
    assert scores["iou"] == pytest.approx(zoo_iou, rel=1e-9)
    assert scores["parsed"] == float(parse_box(output) is not None)


def test_rec_m3d_reads_the_box_of_the_reference_answer():
    good = "[0.2, 0.2, 0.2, 0.6, 0.6, 0.6]"
    # an answer without a box: M3D scores -1 whatever the output
    assert grounding.rec_scores(good, TARGET, "The liver is not present.")["iou_m3d"] == -1.0
    # without an answer text the target itself is M3D's answer box
    assert grounding.rec_scores(good, TARGET)["iou_m3d"] == pytest.approx(1.0, abs=1e-4)
    assert parse_box_m3d(ANSWER) == TARGET
    assert parse_box_m3d(None) is None  # type: ignore[arg-type]
    assert box_iou_m3d(None, TARGET) == -1.0 and box_iou_m3d(TARGET, None) == -1.0


# ---------------------------------------------------------------- BERTScore (bert-score)
WORDS = "the liver is normal a lesion in kidney spleen no seen . , enhancing non -".split()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random 3-layer BERT with a word-level vocabulary, saved as a local model folder."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                                                + WORDS) + "\n")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=16, num_hidden_layers=3,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    BertTokenizer(str(folder / "vocab.txt"), model_max_length=64).save_pretrained(folder)
    return str(folder)


# lengths differ, so a library that sorts by length reorders them
PREDICTIONS = ["the liver is normal .", "a lesion in the kidney", "no lesion seen"]
REFERENCES = ["the liver is normal .", "a lesion in the spleen", "the kidney is normal"]


def test_bertscore_scores_each_prediction_against_its_own_reference(tiny_bert):
    from bert_score import BERTScorer

    f1 = text.bertscore_f1(PREDICTIONS, REFERENCES, tiny_bert, num_layers=2, batch_size=8)
    assert f1[0] == pytest.approx(1.0, abs=1e-6)  # identical pair
    # M3D scores one pair per call: the batched scores are those
    scorer = BERTScorer(model_type=tiny_bert, num_layers=2, use_fast_tokenizer=False)
    for p, r, value in zip(PREDICTIONS, REFERENCES, f1):
        assert value == pytest.approx(float(scorer.score([p], [[r]])[2][0]), abs=1e-6)
    other = text.bertscore_f1(PREDICTIONS, REFERENCES, tiny_bert, num_layers=1)
    assert other[1] != pytest.approx(f1[1], abs=1e-4)  # the layer is the one asked for


def test_bertscore_roberta_text_gets_the_leading_space_m3d_had(tmp_path):
    """bert-score asks for ``add_prefix_space=True`` when encoding RoBERTa text; with the
    transformers 4 M3D used, ``"liver the"`` became ``Ġliver Ġthe``. transformers 5 ignores the
    argument at encoding time, so the zoo loads the tokenizer with it."""
    import json

    from bert_score.utils import sent_encode
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
                                        + list("abcdefghijklmnopqrstuvwxyz") + ["Ġ"])}
    merges = ["t h", "th e", "Ġ the", "l i", "li v", "liv e", "live r", "Ġ liver"]
    for merge in merges:
        vocab[merge.replace(" ", "")] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    RobertaTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"),
                     model_max_length=32).save_pretrained(tmp_path)
    RobertaModel(RobertaConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=32,
                               max_position_embeddings=40)).save_pretrained(tmp_path)
    tokenizer = text._bertscorer(str(tmp_path), 1, 4)._tokenizer
    assert tokenizer.convert_ids_to_tokens(sent_encode(tokenizer, "liver the")) == [
        "<s>", "Ġliver", "Ġthe", "</s>"]
    assert text.bertscore_f1(["liver the"], ["liver the"], str(tmp_path), 1) == [
        pytest.approx(1.0, abs=1e-6)]


def test_bertscore_layer_defaults_to_bert_scores_table(tmp_path):
    roberta = tmp_path / "roberta-large"
    roberta.mkdir()
    assert text.bertscore_layer(str(roberta), None) == 17  # M3D's lang="en"
    assert text.bertscore_layer(str(roberta), 5) == 5
    with pytest.raises(ConfigError, match="bertscore_layers"):
        text.bertscore_layer(str(tmp_path), None)
    with pytest.raises(MissingFileError, match="not a local model directory"):
        text.bertscore_f1(["a"], ["a"], str(tmp_path / "missing"))


def test_torchmetrics_bertscore_still_mispairs_a_batch(tiny_bert):
    """torchmetrics issue #2728: its BERTScore sorts the predictions and the references by
    length separately, so in a batch a prediction meets another item's reference. If this
    fails, torchmetrics has fixed it and could score BERTScore again."""
    from torchmetrics.text.bert import BERTScore

    metric = BERTScore(model_name_or_path=tiny_bert, num_layers=2, max_length=64)
    f1 = metric(PREDICTIONS, REFERENCES)["f1"].tolist()
    assert f1[0] != pytest.approx(1.0, abs=1e-3)  # the identical pair is not scored as one
    assert max(f1[1:]) == pytest.approx(1.0, abs=1e-6)  # another item met that reference


def test_bertscore_model_folder_checked_before_evaluation(tmp_path):
    from zoo.evaluation.runner import bertscore_layer

    assert bertscore_layer({"bertscore_model": None}) is None
    with pytest.raises(MissingFileError):
        bertscore_layer({"bertscore_model": str(tmp_path / "nope")})
    roberta = tmp_path / "roberta-large"
    roberta.mkdir()
    assert bertscore_layer({"bertscore_model": str(roberta), "bertscore_layers": None}) == 17
