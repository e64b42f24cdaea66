"""Each evaluation metric against values computed by hand on small inputs."""

import math

import pytest
import torch

from zoo.evaluation import classification, grounding, segmentation, text, vqa
from zoo.evaluation.base import mean_scores
from zoo.evaluation.retrieval import per_item_recall
from zoo.evaluation.runner import metric_key, spaced

CHOICES = ["liver", "kidney", "spleen", "lung"]


def test_bleu1_is_clipped_unigram_precision_times_brevity_penalty():
    # 3 of 3 words match; hypothesis 3 words vs reference 6: BP = exp(1 - 6/3)
    assert text.bleu("the cat sat", "the cat sat on the mat", 1) == pytest.approx(math.exp(-1))
    assert text.bleu("the cat sat on the mat", "the cat sat on the mat", 4) == pytest.approx(1.0)
    assert text.bleu("", "the cat", 1) == 0.0


def test_rouge1_and_rougeL_f_measure():
    scores = text.rouge("the cat sat", "the cat sat on the mat")
    # P = 3/3, R = 3/6 -> F = 2 * 1 * 0.5 / 1.5
    assert scores["rouge1"] == pytest.approx(2 / 3)
    assert scores["rougeL"] == pytest.approx(2 / 3)
    assert text.rouge("mat on", "on mat")["rougeL"] == pytest.approx(0.5)  # LCS 1 of 2


def test_meteor_exact_match_pays_only_the_fragmentation_penalty():
    # m = 3 matches in one chunk: Fmean = 1, penalty = 0.5 * (1/3)^3
    assert text.meteor("the cat sat", "the cat sat") == pytest.approx(1 - 0.5 / 27, abs=1e-4)
    assert text.meteor("dog", "the cat sat") == 0.0


def test_text_scores_name_m3d_variants_next_to_corrected_ones():
    scores = text.text_scores("the cat sat", "the cat sat on the mat")
    assert scores["bleu_m3d"] == pytest.approx(scores["bleu1"])  # every word matches: no case or
    # smoothing difference here (test_eval_m3d_metrics.py has the cases where they differ)
    assert scores["rouge_m3d"] == scores["rouge1"]
    assert text.meteor_key() in scores
    assert text.bertscore_f1(["a"], ["a"], None) is None  # no local model: skipped


def test_closed_vqa_strict_versus_m3d_substring_rule():
    answer = "B. kidney"
    assert vqa.closed_scores("B. kidney", answer, CHOICES) == {"accuracy": 1.0, "accuracy_m3d": 1.0}
    # listing several choices scores under M3D's rule but commits to A under the strict parse
    assert vqa.closed_scores("A. liver B. kidney", answer, CHOICES) == {"accuracy": 0.0,
                                                                        "accuracy_m3d": 1.0}
    assert vqa.closed_scores("kidney", answer, CHOICES) == {"accuracy": 1.0, "accuracy_m3d": 0.0}
    assert vqa.parse_choice("(C) spleen", CHOICES) == "C"
    assert vqa.parse_choice("maybe", CHOICES) is None


def test_majority_baseline_uses_the_majority_text_per_question_type():
    train = [{"question_type": "plane", "answer": "A. axial", "choices": ["axial", "x", "y", "z"]},
             {"question_type": "plane", "answer": "C. axial", "choices": ["x", "y", "axial", "z"]},
             {"question_type": "plane", "answer": "B. sagittal", "choices": ["x", "sagittal", "y", "z"]}]
    majority = vqa.majority_answers(train)
    assert majority["plane"][0] == "axial"
    assert vqa.majority_prediction(majority, "plane", ["q", "r", "s", "axial"]) == "D. axial"


def test_rec_true_iou_and_m3d_enclosing_box_iou():
    pred = grounding.format_box_text([0, 0, 0, 0.5, 0.5, 1])
    scores = grounding.rec_scores(pred, [0.25, 0.25, 0, 0.75, 0.75, 1])
    # intersection 0.25 * 0.25 = 0.0625; union 0.25 + 0.25 - 0.0625; enclosing 0.75 * 0.75
    assert scores["iou"] == pytest.approx(0.0625 / 0.4375)
    assert scores["iou_m3d"] == pytest.approx(0.0625 / 0.5625, rel=1e-5)
    assert scores["hit@0.5"] == 0.0
    # no box: the zoo scores 0, M3D's code -1
    assert grounding.rec_scores("no box", [0, 0, 0, 1, 1, 1]) == {"iou": 0.0, "iou_m3d": -1.0,
                                                                  "hit@0.5": 0.0, "parsed": 0.0}
    assert grounding.mean_box([[0, 0, 0, 1, 1, 1], [0.5] * 3 + [1] * 3]) == [0.25] * 3 + [1.0] * 3


def test_dice_soft_and_thresholded():
    target = torch.zeros(1, 1, 1, 2, 2)
    target[0, 0, 0, 0, 0] = 1
    probs = torch.zeros(1, 1, 1, 2, 2)
    probs[0, 0, 0, 0] = 0.5  # two voxels at 0.5, one of them on the target
    scores = segmentation.dice_scores(probs, target)[0]
    assert scores["dice_soft"] == pytest.approx(2 * 0.5 / (1 + 1), abs=1e-4)
    assert scores["dice"] == pytest.approx(0.0, abs=1e-4)  # nothing above 0.5
    empty = torch.zeros(1, 1, 1, 2, 2)
    assert segmentation.empty_mask_scores(empty)[0]["dice"] == pytest.approx(1.0)
    assert segmentation.empty_mask_scores(target)[0]["dice"] == pytest.approx(0.0, abs=1e-4)


def test_per_item_retrieval_recall():
    image = torch.eye(3)
    text_emb = torch.eye(3)[[0, 2, 1]]  # items 1 and 2 swapped their texts
    items = per_item_recall(image, text_emb, ks=(1, 2))
    assert [i["image_to_text/R@1"] for i in items] == [1.0, 0.0, 0.0]
    assert [i["text_to_image/R@2"] for i in items] == [1.0, 1.0, 1.0]


def test_classification_accuracy_and_auroc():
    out = classification.classification_metrics(torch.tensor([0.9, 0.2, 0.6, 0.4]),
                                                torch.tensor([1, 0, 0, 1]))
    assert out["accuracy"] == pytest.approx(0.5)
    assert out["auroc"] == pytest.approx(0.75)  # 3 of 4 positive-negative pairs ordered


def test_mean_scores_by_question_type_and_helpers():
    records = [{"scores": {"accuracy": 1.0}, "question_type": "plane"},
               {"scores": {"accuracy": 0.0}, "question_type": "location"},
               {"scores": {"accuracy": 1.0}, "question_type": "location"}]
    means = mean_scores(records, by_type=True)
    assert means == {"accuracy": pytest.approx(2 / 3), "accuracy/plane": 1.0,
                     "accuracy/location": 0.5}
    assert spaced(10, 3) == [0, 3, 6] and spaced(2, None) == [0, 1]
    assert metric_key("test/rec/hit@0.5") == "test/rec/hit_at_0.5"


class FakeSegmenter:
    """segment() without max_new_tokens (Med3DInsight style) or with it (LaMed style)."""

    training = False
    heads = {"seg": None}

    def __init__(self, generative):
        self.generative = generative

    def segment(self, samples, max_new_tokens=None):
        masks = [s["mask"].clone() for s in samples]
        masks[-1] = masks[-1][:0]  # last item: no [SEG] generated -> empty prediction
        return ["It is [SEG]."] * len(samples), masks

    def classify(self, samples):
        return torch.tensor([[0.2, 0.8], [0.7, 0.3]])


def _seg_samples():
    out = []
    for i in range(2):
        mask = torch.zeros(1, 2, 2, 2)
        mask[0, 0, 0, 0] = 1
        out.append({"meta": {"id": f"s{i}"}, "task": "seg", "answer": "It is [SEG].", "mask": mask,
                    "label": 1 - i})
    return out


def test_seg_and_cls_evaluators_through_model_methods():
    from zoo.evaluation.tasks import EvalContext, cls, seg

    result = seg(FakeSegmenter(True), _seg_samples(), EvalContext(batch_size=2))
    assert [r["scores"]["dice"] for r in result.records] == pytest.approx([1.0, 0.0], abs=1e-4)
    assert result.metrics["dice"] == pytest.approx(0.5, abs=1e-4)
    assert result.baseline == "empty mask"
    out = cls(FakeSegmenter(False), _seg_samples(), EvalContext(batch_size=2))
    assert out.metrics["accuracy"] == pytest.approx(1.0)  # argmax 1, 0 vs labels 1, 0
    assert out.metrics["auroc"] == pytest.approx(1.0)


def test_models_without_a_method_are_skipped_not_zeroed():
    from zoo.evaluation.tasks import EvalContext, rec, retrieval, seg

    class Nothing:
        training = False

    for task in (seg, retrieval, rec):
        result = task(Nothing(), _seg_samples(), EvalContext())
        assert result.skipped and not result.metrics and result.note


class FakeChooser:
    """Generates ``"A."`` always; its likelihood prefers the full answer naming ``sagittal``."""

    training = False

    def generate(self, samples, max_new_tokens=16):
        return ["A." for _ in samples]

    def answer_logprob(self, samples):
        return torch.tensor([0.0 if s["answer"].endswith("sagittal") else -5.0 for s in samples])


def test_closed_vqa_likelihood_accuracy_ranks_the_full_answers():
    from zoo.evaluation.tasks import EvalContext, most_likely_choices, vqa_closed

    def item(i, choices, answer):
        return {"prompt": "plane?", "choices": choices, "answer": answer, "task": "vqa_closed",
                "meta": {"id": str(i), "question_type": "plane"}}

    samples = [item(0, ["axial", "sagittal", "coronal", "NA"], "B. sagittal"),
               item(1, ["sagittal", "axial", "coronal", "oblique"], "B. axial")]
    assert most_likely_choices(FakeChooser(), samples, EvalContext(batch_size=3)) == ["B", "A"]
    train = [item(9, ["axial", "sagittal", "coronal", "NA"], "A. axial")]
    result = vqa_closed(FakeChooser(), samples, EvalContext(train_items=train, batch_size=3))
    assert [r["scores"]["accuracy_ll"] for r in result.records] == [1.0, 0.0]
    assert [r["scores"]["accuracy"] for r in result.records] == [0.0, 0.0]
    assert result.metrics["accuracy_ll/plane"] == pytest.approx(0.5)
    # the majority baseline ("axial") commits to one choice: its accuracy_ll is its accuracy
    assert [r["scores"]["accuracy_ll"] for r in result.baseline_records] == [0.0, 1.0]
