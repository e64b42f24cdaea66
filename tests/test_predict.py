"""`zoo predict` and `zoo chat` on your own volumes: prepared as the model's training volumes were,
masks written on the source's grid with its affine, boxes in its voxels and world frame, the
model named by run id, run folder or exported folder, `--json`, and a multi-turn chat."""

import io
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.byo import AFFINE, LESION, SIZE, SOURCE_SHAPE, lesion_volume, write_nifti
from zoo.cli import main
from zoo.data.prepare import PrepSpec
from zoo.errors import ConfigError, DataError

SPEC = PrepSpec(size=SIZE, window="brain")


def dice(a, b):
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def source_lesion():
    truth = np.zeros(SOURCE_SHAPE, bool)
    truth[LESION] = True
    return truth


@pytest.fixture
def scan(tmp_path):
    return write_nifti(tmp_path / "scan.nii.gz", lesion_volume(0)[0])


def test_a_model_space_mask_comes_back_onto_the_source_lesion(scan):
    """The prepared volume's own lesion, mapped back, is the source lesion on the source grid, and
    the way back equals MONAI's inverse transforms of the preparation."""
    from monai import transforms as mt
    from monai.data import MetaTensor

    from zoo.data.input_volume import read_input
    from zoo.data.prepare import zoo_steps

    volume = read_input(scan, SPEC, SIZE)
    assert volume.image.shape == (1, *SIZE) and volume.source_shape == SOURCE_SHAPE
    lesion = (volume.image[0] > 0.75).astype(np.float32)               # (D, H, W) model space
    back = volume.to_source(lesion)
    assert back.shape == SOURCE_SHAPE
    assert dice(back >= 0.5, source_lesion()) > 0.85
    # MONAI's own inverse of the same steps (orientation, crop, resize; the window is pointwise)
    compose = mt.Compose(zoo_steps(SPEC, ["image"]))
    hu = lesion_volume(0)[0]
    out = compose({"image": MetaTensor(torch.as_tensor(hu)[None], affine=torch.as_tensor(AFFINE))})
    prediction = MetaTensor(torch.from_numpy(lesion.transpose(2, 1, 0).copy())[None],
                            affine=out["image"].affine)
    prediction.applied_operations = out["image"].applied_operations
    inverse = compose.inverse({"image": prediction})["image"]
    assert np.allclose(inverse.affine.numpy(), AFFINE, atol=1e-5)
    assert np.allclose(inverse.as_tensor()[0].numpy(), back, atol=1e-4)


def test_a_box_comes_back_in_source_voxels_and_world_millimetres(scan):
    from zoo.boxes import box_from_mask
    from zoo.data.input_volume import read_input

    volume = read_input(scan, SPEC, SIZE)
    box = box_from_mask(volume.image[0] > 0.75)
    found = volume.box_coordinates(box)
    low, high = np.array(found["voxel"]["min"]), np.array(found["voxel"]["max"])
    truth_low = np.array([s.start for s in LESION])
    truth_high = np.array([s.stop - 1 for s in LESION])
    assert found["voxel"]["axes"] == "IJK"
    assert np.all(np.abs(low - truth_low) <= 1.0) and np.all(np.abs(high - truth_high) <= 1.0)
    corners = np.array([[*low, 1.0], [*high, 1.0]]) @ AFFINE.T
    world = np.sort(corners[:, :3], axis=0)
    assert np.allclose(found["world"]["min"], world[0], atol=0.02)
    assert np.allclose(found["world"]["max"], world[1], atol=0.02)


def test_a_dicom_series_mask_is_written_as_nifti_in_the_series_frame(tmp_path):
    """A DICOM folder: prepared as a NIfTI would be; the mask goes back onto the series' voxel
    grid and is written as NIfTI with the series' RAS affine (patient LPS flipped)."""
    from tests.test_data_readers import write_dicom_slice
    from zoo.data.input_volume import read_input
    from zoo.data.io import load_dicom_series

    folder = tmp_path / "series"
    folder.mkdir()
    for k in range(10):
        hu = np.full((28, 24), 30.0)
        hu[:2], hu[-2:] = -1000.0, -1000.0
        if 3 <= k < 7:
            hu[9:17, 6:14] = 80.0
        write_dicom_slice(folder / f"s{k:02d}.dcm", hu, position=(-20.0, 15.0, 4.0 * k),
                          pixel_spacing=(0.8, 0.9))
    array, affine = load_dicom_series(folder)
    volume = read_input(folder, SPEC, SIZE)
    assert volume.format == "dicom" and volume.source_shape == array.shape
    written = volume.save_mask((volume.image[0] > 0.75).astype(np.float32), tmp_path / "m.nii.gz")
    mask = nib.load(written["path"])
    assert np.allclose(mask.affine, affine) and mask.shape == array.shape
    assert dice(np.asarray(mask.dataobj).astype(bool), array > 60) > 0.85


def test_an_npy_input_is_read_as_it_is_and_its_size_checked(tmp_path):
    from zoo.data.input_volume import read_input

    np.save(tmp_path / "a.npy", np.random.default_rng(0).random((1, *SIZE), dtype=np.float32))
    volume = read_input(tmp_path / "a.npy", None, SIZE)
    assert volume.source_affine is None and volume.box_coordinates([0, 0, 0, 0.5, 0.5, 0.5])[
        "voxel"] == {"axes": "DHW", "min": [0.0, 0.0, 0.0], "max": [8.0, 16.0, 16.0]}
    with pytest.raises(DataError, match=r"a\.npy: the volume is \[16, 32, 32\] .* model reads "
                                        r"\[32, 32, 32\]"):
        read_input(tmp_path / "a.npy", None, (32, 32, 32))
    with pytest.raises(DataError, match="image must be a NIfTI file, a DICOM series folder or an .npy"):
        (tmp_path / "b.txt").write_text("x")
        read_input(tmp_path / "b.txt", None, SIZE)


def test_the_recorded_preparation_is_used_and_window_only_without_one():
    from zoo.data.preparation import spec_for

    recorded = {"spec": {"size": list(SIZE), "window": "brain"}, "source": "prepared.json"}
    assert spec_for(recorded, SIZE).window == "brain"
    with pytest.raises(ConfigError, match="--window: the model records how its training volumes "
                                          "were prepared"):
        spec_for(recorded, SIZE, window="abdomen")
    with pytest.raises(ConfigError, match="records no preparation spec .*give --window"):
        spec_for({"spec": None, "note": "synthetic"}, SIZE)
    made = spec_for({"spec": None}, SIZE, window="-100,200", spacing=[2.0, 1.0, 1.0])
    assert made.hu_window() == (-100.0, 200.0) and made.size == SIZE and made.spacing == (2, 1, 1)
    assert spec_for(None, SIZE, modality="mri").modality == "mri"
    assert spec_for({"spec": None, "note": "synthetic"}, SIZE, required=False) is None


# ------------------------------------------------------------------ the trained tiny model


def force_answer(monkeypatch, text):
    """Make the LM answer ``text`` (then eos) whatever it would say: the answer's content is not
    what these tests are about."""
    from transformers import LogitsProcessor, LogitsProcessorList

    from heads.causal_lm import CausalLM

    original = CausalLM.generate

    class Forced(LogitsProcessor):
        def __init__(self, ids):
            self.ids = ids

        def __call__(self, input_ids, scores):
            step = min(input_ids.shape[1], len(self.ids) - 1)
            forced = torch.full_like(scores, -float("inf"))
            forced[:, self.ids[step]] = 0.0
            return forced

    def generate(self, *args, **kwargs):
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.eos_id]
        kwargs["logits_processor"] = LogitsProcessorList([Forced(ids)])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CausalLM, "generate", generate)


def head_sees_bright_voxels(monkeypatch):
    """The segmentation head's logits replaced by the image's bright voxels (the lesion): a
    known model-space mask, so that where the written mask lands can be checked."""
    import recipes.language_model

    def run_head(head, image, tokens, prompts, targets=None):
        logits = [((image[i, 0] - 0.75) * 50).expand(len(p), *image.shape[2:])
                  for i, p in enumerate(prompts)]
        return logits, None, sum(len(p) for p in prompts)

    monkeypatch.setattr(recipes.language_model, "run_head", run_head)


BOX = "<bx_start>[0.250, 0.300, 0.200, 0.600, 0.700, 0.500]<bx_end>"


def test_predict_writes_each_seg_mask_with_the_source_affine_and_shape(byo_run, monkeypatch,
                                                                        capsys, tmp_path):
    monkeypatch.chdir(byo_run.home)
    force_answer(monkeypatch, "Here. [SEG]")
    scans = [byo_run.hospital / "p00" / "ct.nii.gz", byo_run.hospital / "p01" / "ct.nii.gz"]
    assert main(["predict", byo_run.run_id, *map(str, scans), "--question", "Segment the lesion.",
                 "--task", "seg", "--out", str(tmp_path / "masks")]) == 0
    printed = capsys.readouterr().out
    assert printed.count("answer: Here. [SEG]") == 2
    # both inputs are named ct.nii.gz: the files say which is which
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == [
        "ct-0.q0.seg0.nii.gz", "ct-1.q0.seg0.nii.gz"]
    for path in sorted((tmp_path / "masks").iterdir()):
        mask = nib.load(str(path))
        assert mask.shape == SOURCE_SHAPE
        assert np.allclose(mask.affine, AFFINE, atol=1e-6)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}


def test_the_mask_lands_on_the_lesion_in_the_source_frame(byo_run, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(byo_run.home)
    force_answer(monkeypatch, "[SEG]")
    head_sees_bright_voxels(monkeypatch)
    scan = byo_run.hospital / "p02" / "ct.nii.gz"
    assert main(["-q", "predict", str(byo_run.run_dir), str(scan), "--question", "Segment it.",
                 "--out", str(tmp_path), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    mask = document["results"][0]["masks"][0]
    written = np.asarray(nib.load(mask["path"]).dataobj).astype(bool)
    assert dice(written, source_lesion()) > 0.85 and mask["voxels"] == int(written.sum())


def test_json_schema_and_the_same_answers_from_run_id_run_folder_and_export(byo_run, monkeypatch,
                                                                             capsys, tmp_path):
    monkeypatch.chdir(byo_run.home)
    assert main(["-q", "export", byo_run.run_id, str(tmp_path / "exported")]) == 0
    capsys.readouterr()
    scan = str(byo_run.hospital / "p04" / "ct.nii.gz")
    (tmp_path / "q.jsonl").write_text('{"question": "Is there a lesion? Choices: A. yes B. no", '
                                      '"task": "vqa_closed"}\n\n{"question": "What is seen?"}\n')
    documents = []
    for model in (byo_run.run_id, str(byo_run.run_dir), str(tmp_path / "exported")):
        assert main(["-q", "predict", model, scan, "--questions", str(tmp_path / "q.jsonl"),
                     "--json", "--max-new-tokens", "6", "--out", str(tmp_path / "m")]) == 0
        documents.append(json.loads(capsys.readouterr().out))
    assert [d["model_kind"] for d in documents] == ["run", "run", "export"]
    answers = [[r["answer"] for r in d["results"]] for d in documents]
    assert answers[0] == answers[1] == answers[2]
    document = documents[0]
    assert set(document) == {"model", "model_kind", "preparation", "results"}
    assert document["preparation"]["spec"]["window"] == "brain"
    assert document["preparation"]["source"].endswith("prepared.json")
    first, second = document["results"]
    assert set(first) == {"volume", "format", "question", "task", "answer", "masks", "box"}
    assert (first["task"], second["task"], first["format"]) == ("vqa_closed", "vqa_open", "nifti")
    assert isinstance(first["answer"], str) and first["masks"] == [] and first["box"] is None
    # sampling options reach generation; a box in the answer comes with its coordinates
    force_answer(monkeypatch, f"It is at {BOX}")
    assert main(["-q", "predict", byo_run.run_id, scan, "--question", "Where is the lesion?",
                 "--temperature", "0.7", "--top-p", "0.9", "--json"]) == 0
    box = json.loads(capsys.readouterr().out)["results"][0]["box"]
    assert box["normalized"] == [0.25, 0.3, 0.2, 0.6, 0.7, 0.5]
    assert set(box["voxel"]) == {"axes", "min", "max"} and box["world"]["frame"] == "RAS mm"


def test_bad_predict_inputs_are_one_line(byo_run, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(byo_run.home)
    scan = str(byo_run.hospital / "p00" / "ct.nii.gz")
    cases = [
        ([byo_run.run_id, scan], "give --question TEXT"),
        ([byo_run.run_id, scan, "--question", "q", "--window", "abdomen"],
         "--window: the model records how its training volumes were prepared"),
        ([byo_run.run_id, scan, "--question", "q", "--seg-rule", "segvol"],
         "--seg-rule applies to SegVol models"),
        ([byo_run.run_id, scan, "--question", "q", "--top-p", "0.9"], "--top-p applies to sampling"),
        ([byo_run.run_id, scan, "--question", "q", "--task", "vqa"], "task 'vqa': not a task"),
        ([byo_run.run_id, str(tmp_path / "none.nii.gz"), "--question", "q"],
         "none.nii.gz: input volume does not exist"),
        ([str(tmp_path), scan, "--question", "q"], "neither a run folder"),
        (["0123456789abcdef", scan, "--question", "q"], "run '0123456789abcdef': not found"),
    ]
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "tsk": "seg"}\n')
    cases.append(([byo_run.run_id, scan, "--questions", str(tmp_path / "bad.jsonl")],
                  r"bad.jsonl row 1: unknown key(s) ['tsk']"))
    for argv, message in cases:
        assert main(["predict", *argv]) == 2, argv
        err = [line for line in capsys.readouterr().err.splitlines()
               if line.startswith("zoo predict: ")]
        assert len(err) == 1 and message in err[0], (argv, err)


def test_a_model_without_a_recorded_preparation_reads_npy_inputs(byo_run, monkeypatch, capsys,
                                                                  tmp_path):
    """A model trained on the synthetic benchmark (or M3D's .npy files) records no preparation:
    a prepared .npy of its size is answered; a NIfTI needs --window."""
    monkeypatch.chdir(byo_run.home)
    monkeypatch.setattr("zoo.trained.Trained.preparation_record",
                        lambda self: {"spec": None, "note": "the synthetic benchmark"})
    np.save(tmp_path / "scan.npy", np.random.default_rng(0).random((1, *SIZE), dtype=np.float32))
    assert main(["-q", "predict", byo_run.run_id, str(tmp_path / "scan.npy"), "--question",
                 "Which organ?", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["answer"] is not None
    scan = str(byo_run.hospital / "p00" / "ct.nii.gz")
    assert main(["predict", byo_run.run_id, scan, "--question", "Which organ?"]) == 2
    assert "records no preparation spec (the synthetic benchmark); give --window" in \
        capsys.readouterr().err
    assert main(["-q", "predict", byo_run.run_id, scan, "--question", "Which organ?", "--window",
                 "brain", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["preparation"]
    assert shown["spec"]["window"] == "brain" and shown["spec"]["size"] == list(SIZE)
    assert shown["source"].startswith("the command line")


def test_every_input_is_checked_before_the_model_is_loaded(monkeypatch, capsys, tmp_path):
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr("zoo.trained.locate", load)
    np.save(tmp_path / "a.npy", np.zeros((1, *SIZE), dtype=np.float32))
    for volume, message in [(tmp_path / "none.nii.gz", "none.nii.gz: input volume does not exist"),
                            (tmp_path / "a.txt", "a.txt: image must be a NIfTI file")]:
        if volume.suffix == ".txt":
            volume.write_text("x")
        assert main(["predict", "run", str(tmp_path / "a.npy"), str(volume), "--question",
                     "q"]) == 2
        assert message in capsys.readouterr().err.splitlines()[-1]


def test_chat_keeps_the_turns_and_starts_over_on_reset(byo_run, monkeypatch, capsys):
    """`zoo chat` driven through its standard input: two questions, /reset, one more, end of
    input; each turn's prompt holds the earlier turns."""
    from zoo.seam import ImageTextCollator

    monkeypatch.chdir(byo_run.home)
    force_answer(monkeypatch, "A lesion.")
    prompts = []
    original = ImageTextCollator.__call__

    def collate(self, samples):
        prompts.extend(s["prompt"] for s in samples)
        return original(self, samples)

    monkeypatch.setattr(ImageTextCollator, "__call__", collate)
    monkeypatch.setattr("sys.stdin", io.StringIO("What is seen?\nWhere?\n/reset\nAnd now?\n"))
    assert main(["-q", "chat", byo_run.run_id, str(byo_run.hospital / "p00" / "ct.nii.gz")]) == 0
    out = capsys.readouterr().out
    assert out.count("model> A lesion.") == 3 and "(history cleared)" in out
    assert prompts == ["What is seen?", "What is seen? A lesion. Where?", "And now?"]


@pytest.mark.parametrize("command, words", [
    ("predict", ["--question", "--questions", "--json", "--max-new-tokens", "--temperature",
                 "--top-p", "--seg-rule", "--window", "--out"]),
    ("chat", ["--max-new-tokens", "--temperature", "--task"]),
    ("export", ["--merge-lora", "out_dir"]),
    ("eval", ["zoo export"])])
def test_each_command_has_help(command, words, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(w in text or w.lower() in text for w in words), text


@pytest.mark.parametrize("rule", ["zoo", "segvol"])
def test_a_segvol_model_segments_a_larger_volume_by_zooming(rule, scan, tmp_path):
    """A stand-alone SegVol model takes the question as its text prompt and segments a volume
    larger than its input through zoom-out-zoom-in with the chosen rule; the mask lands on the
    source grid (untrained weights: the geometry is what is checked)."""
    from zoo.build import build_model
    from zoo.config import compose
    from zoo.data.input_volume import read_input
    from zoo.predict import Generation, Predictor, Question

    model = build_model(compose(["recipe=segvol", "head=test_segvol", "data=test_synth",
                                 "recipe.image_size=[16,32,32]"]))
    predictor = Predictor(model, Generation(seg_rule=rule), tmp_path, spec=PrepSpec(
        size=(20, 40, 40), window="brain"))
    assert predictor.image_size is None                     # any size: zoom-out-zoom-in
    volume = read_input(scan, predictor.spec, predictor.image_size)
    record, = predictor.ask(volume, [Question("lesion", "seg")], "scan")
    assert record["answer"] is None and record["masks"][0]["path"].endswith("scan.q0.seg0.nii.gz")
    mask = nib.load(record["masks"][0]["path"])
    assert mask.shape == SOURCE_SHAPE and np.allclose(mask.affine, AFFINE, atol=1e-6)


def test_questions_file_problems_name_the_file_and_line(tmp_path):
    from zoo.predict import read_questions

    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "Which organ?"}\n\n{"task": "vqa_open"}\n')
    with pytest.raises(DataError, match=r"q\.jsonl row 3: each line is"):
        read_questions(path)
    for text, message in [('{"question": "a"}\n{oops\n', "invalid json"),
                          ('["a"]\n', "must be a json object")]:
        path.write_text(text)
        with pytest.raises(DataError, match=message):
            read_questions(path)
    path.write_bytes(b'{"question": "caf\xe9"}\n')  # Latin-1, not UTF-8
    with pytest.raises(DataError, match="not UTF-8"):
        read_questions(path)
    path.write_text('{"question": "Which organ?"}\n\n'
                    '{"question": "Which plane?", "task": "vqa_open"}\n')
    assert [q.text for q in read_questions(path)] == ["Which organ?", "Which plane?"]
