"""A battery of bad inputs and faults against the zoo, as a new user would meet them
(docs/guarantees.md).

    python experiments/battery.py [--out docs/battery.md] [--only GROUP]

Every case runs a ``zoo`` command in process (``zoo.cli.main``) or one fault, in a scratch folder
that holds one tiny finished run and one killed run, and is classified as

- **clear error**: a non-zero exit with exactly one ``zoo ...:`` line on stderr;
- **traceback**: an exception escaped the command line;
- **unclear error**: a non-zero exit without that one line, or a line that does not name what
  the case says it must (the file at fault);
- **accepted**: exit 0.

Each case says what it should get (``error`` or ``accept``; an accepted case may check more, e.g.
that the run finished or a warning named the file); a case is *right* when it got that. The
per-case table goes to ``--out`` and the totals into the marked block of docs/guarantees.md, with
the commit, the command and the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
BLOCK_START, BLOCK_END = "<!-- battery:start -->", "<!-- battery:end -->"


@dataclass
class Outcome:
    kind: str  # clear error | traceback | unclear error | accepted
    detail: str
    extra_ok: bool = True  # further checks of an accepted case held
    stderr: str = ""


@dataclass
class Case:
    group: str
    name: str
    expect: str  # error | accept
    run: Callable[["Lab"], Outcome]
    names: str = ""  # the error line must contain this (the file or key at fault)
    outcome: Outcome | None = None
    seconds: float = 0.0

    @property
    def right(self) -> bool:
        if self.outcome is None:
            return False
        if self.expect == "error":
            return self.outcome.kind == "clear error"
        return self.outcome.kind == "accepted" and self.outcome.extra_ok


def cli(*argv: str) -> Outcome:
    """Run ``zoo ARGV`` in process and classify what a user sees."""
    from zoo.cli import main

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # noqa: BLE001 (that is what is measured)
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        return Outcome("traceback", f"{type(exc).__name__}: {first}")
    if code == 0:
        return Outcome("accepted", out.getvalue().strip().splitlines()[-1][:160]
                       if out.getvalue().strip() else "exit 0", stderr=err.getvalue())
    lines = [x for x in err.getvalue().splitlines() if x.startswith(("zoo ", "zoo: error:"))]
    if len(lines) == 1:
        return Outcome("clear error", lines[0][:220], stderr=err.getvalue())
    return Outcome("unclear error", f"exit {code}; {len(lines)} zoo lines: "
                   + " | ".join(err.getvalue().strip().splitlines()[-2:])[:200],
                   stderr=err.getvalue())


class Lab:
    """The scratch folder: a tracking store, a data cache, a finished run and a killed run."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.common = ["data=test_synth", "trainer.max_steps=2", "trainer.validate=false",
                       "eval.tasks=[vqa_closed]", "eval.max_items=2", "eval.cost=false",
                       f"tracking.root={home / 'runs'}", f"data.cache_dir={home / 'data'}",
                       f"trainer.output_dir={home / 'outputs'}"]
        self.uri = f"sqlite:///{home / 'runs' / 'mlflow.db'}"
        self.finished = self.train([])
        self.killed = self.train_killed(["trainer.max_steps=4", "trainer.save_every=1"], kill_at=7)

    def train(self, extra: list[str]) -> str:
        from zoo.cli import main

        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            assert main(["train", *self.common, *extra]) == 0
        return out.getvalue().split("mlflow run ")[1].split()[0]

    def train_killed(self, extra: list[str], kill_at: int) -> str:
        """A run whose process dies inside its ``kill_at``-th forward (stage instruct, after
        several checkpoints)."""
        from recipes.lamed import LaMed

        forward, calls = LaMed.forward, []

        def dying(self, batch):
            calls.append(1)
            if len(calls) == kill_at:
                raise KeyboardInterrupt
            return forward(self, batch)

        LaMed.forward = dying
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                from zoo.cli import main

                try:
                    main(["train", *self.common, *extra])
                except KeyboardInterrupt:
                    pass
        finally:
            LaMed.forward = forward
        folders = sorted((self.home / "outputs").iterdir(), key=lambda p: p.stat().st_mtime)
        return folders[-1].name

    def folder(self, run_id: str) -> Path:
        return self.home / "outputs" / run_id

    def artifact(self, run_id: str, name: str) -> Path:
        return self.home / "runs" / "artifacts" / run_id / "artifacts" / name


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def damaged(path: Path, data: bytes | None = None, text: str | None = None):
    """Replace a file's content for the duration of a case, then restore it."""
    saved = path.read_bytes()
    path.write_bytes(data if data is not None else text.encode())
    try:
        yield
    finally:
        path.write_bytes(saved)


def train(lab: Lab, *extra: str) -> Outcome:
    return cli("train", *lab.common, *extra)


# ---------------------------------------------------------------- cases
def value_cases() -> list[Case]:
    bad = ["trainer.max_grad_norm=-1", "trainer.max_grad_norm=abc", "trainer.max_steps=-5",
           "trainer.max_steps=0", "trainer.max_steps=2.5", "trainer.max_steps={align:0}",
           "trainer.batch_size=0", "trainer.save_every=-1", "trainer.val_batches=-1",
           "trainer.val_batches=0", "trainer.grad_accum=0", "trainer.log_every=0",
           "trainer.num_workers=-1", "trainer.mixed_precision=fp8", "trainer.validate=maybe",
           "trainer.resume=3", "trainer.stages=align", "trainer.stages=[aling]",
           "trainer.compile=fastest", "trainer.output_dir=", "seed=abc", "seed=-1",
           "train_tasks=caption", "eval.max_items=0", "eval.batch_size=0", "eval.split=val",
           "eval.tasks=vqa_closed", "eval.tasks=[vqa_clossed]", "+eval.max_new_tokens.caption=0",
           "eval.judge={url:ftp://x}", "eval.judge={url:http://x,timeuot:3}",
           "eval.bertscore_layers=abc", "recipe.lr=abc", "recipe.lr={align:-1}",
           "recipe.align_lr=0.001", "encoder.checkpoint=vit.safetensors",
           "recipe.epochs=x", "recipe.batch_size=0", "recipe.warmup_ratio=2",
           "recipe.lora_dropout=1.5", "recipe.lora_r=0", "recipe.train_lm=some",
           "connector.kernal=2", "connector.kernel=0", "encoder=vit3d_tiny", "recipe=lamd",
           "data.cases=many", "data.cases=0", "data._target_=shutil.copyfile",
           "lm_warmup={steps:0}", "tracking.uri=foo://bar"]
    # a recipe's stage settings are named by stage and field (``stage 'align': lr=-1``)
    field = {"recipe.lr={align:-1}": "lr", "recipe.batch_size=0": "batch_size"}
    return [Case("config values", f"zoo train {o}", "error", lambda lab, o=o: train(lab, o),
                 field.get(o, o.lstrip("+").split("=")[0].split(".")[-1]))
            for o in bad]


def run_cases() -> list[Case]:
    def eval_other_cwd(lab: Lab) -> Outcome:
        elsewhere = Path(tempfile.mkdtemp(dir=lab.home))
        before = os.getcwd()
        os.chdir(elsewhere)
        try:
            result = cli("eval", "--tracking-uri", lab.uri, lab.finished)
        finally:
            os.chdir(before)
        return result

    def eval_tampered(lab: Lab) -> Outcome:
        weights = lab.folder(lab.finished) / "checkpoints" / "instruct-final" / "model.safetensors"
        other = lab.folder(lab.killed) / "checkpoints" / "align-final" / "model.safetensors"
        with damaged(weights, other.read_bytes()):
            return cli("eval", "--tracking-uri", lab.uri, lab.finished)

    def eval_stored(text_change: Callable[[str], str]) -> Callable[[Lab], Outcome]:
        def run(lab: Lab) -> Outcome:
            stored = lab.artifact(lab.finished, "config.yaml")
            with damaged(stored, text=text_change(stored.read_text())):
                marker = lab.home / "copied"
                result = cli("eval", "--tracking-uri", lab.uri, lab.finished)
                if marker.exists():
                    return Outcome("accepted", "the stored _target_ ran", extra_ok=False)
                return result
        return run

    def eval_missing_final(lab: Lab) -> Outcome:
        final = lab.folder(lab.finished) / "checkpoints" / "instruct-final"
        moved = final.with_name("moved")
        final.rename(moved)
        try:
            return cli("eval", "--tracking-uri", lab.uri, lab.finished)
        finally:
            moved.rename(final)

    def eval_keeps_records(lab: Lab) -> Outcome:
        from zoo.tracking import Tracker

        tracker = Tracker(lab.uri)
        before = tracker.client.get_run(lab.finished).data.metrics
        result = cli("eval", "--tracking-uri", lab.uri, lab.finished, "eval.max_items=1")
        after = tracker.client.get_run(lab.finished).data.metrics
        result.extra_ok = before == after and "child run" in result.detail
        return result

    def resume(*extra: str, damage: Callable[[Path], Path] | None = None) -> Callable:
        def run(lab: Lab) -> Outcome:
            folder = lab.folder(lab.killed)
            if damage is None:
                return train(lab, "trainer.max_steps=4", "trainer.save_every=1",
                             f"trainer.resume={lab.killed}", *extra)
            target = damage(folder)
            with damaged(target, target.read_bytes()[: max(1, target.stat().st_size // 3)]):
                return train(lab, "trainer.max_steps=4", "trainer.save_every=1",
                             f"trainer.resume={lab.killed}", *extra)
        return run

    def newest(folder: Path) -> Path:
        from zoo.checkpoint import latest

        return latest(folder / "checkpoints")[0]

    def resume_truncated_latest(lab: Lab) -> Outcome:
        folder = lab.folder(lab.killed)
        bad = newest(folder) / "model.safetensors"
        bad.write_bytes(bad.read_bytes()[:100])
        result = train(lab, "trainer.max_steps=4", "trainer.save_every=1",
                       f"trainer.resume={lab.killed}")
        from zoo.tracking import Tracker

        warned = [x for x in result.stderr.splitlines() if x.startswith("warning:")]
        status = Tracker(lab.uri).client.get_run(lab.killed).info.status
        result.extra_ok = len(warned) == 1 and str(bad) in warned[0] and status == "FINISHED"
        result.detail = (warned[0] if warned else "no warning")[:200]
        return result

    def two_runs_apart(lab: Lab) -> Outcome:
        second = lab.train([])
        folders = [lab.folder(r) for r in (lab.finished, second)]
        ok = second != lab.finished and all((f / "checkpoints" / "instruct-final").is_dir()
                                            for f in folders)
        return Outcome("accepted", f"two runs in one folder: {folders[0].name}, {folders[1].name}",
                       extra_ok=ok)

    return [
        Case("runs", "zoo train twice in one folder: each run in its own folder", "accept",
             two_runs_apart),
        Case("runs", "zoo eval RUN from another working directory", "accept", eval_other_cwd),
        Case("runs", "zoo eval RUN: train-time metrics unchanged, result in a child run",
             "accept", eval_keeps_records),
        Case("runs", "zoo eval of an unknown run id", "error",
             lambda lab: cli("eval", "--tracking-uri", lab.uri, "0123456789abcdef")),
        Case("runs", "zoo eval: final weights replaced by another run's", "error", eval_tampered),
        Case("runs", "zoo eval: final checkpoint missing", "error", eval_missing_final),
        Case("runs", "zoo eval: stored config with _target_ shutil.copyfile", "error",
             eval_stored(lambda t: t.replace("_target_: zoo.data.synth.test_synth",
                                             "_target_: shutil.copyfile\n  src: /etc/hostname\n"
                                             "  dst: copied", 1))),
        Case("runs", "zoo eval: stored config.yaml is not yaml", "error",
             eval_stored(lambda t: "{{{ not: yaml")),
        Case("runs", "zoo eval eval.max_items=0", "error",
             lambda lab: cli("eval", "--tracking-uri", lab.uri, lab.finished, "eval.max_items=0")),
        Case("runs", "zoo eval eval.tasks=[nope]", "error",
             lambda lab: cli("eval", "--tracking-uri", lab.uri, lab.finished, "eval.tasks=[nope]")),
        Case("runs", "zoo eval with an unreachable tracking server", "error",
             lambda lab: cli("eval", "--tracking-uri", f"http://127.0.0.1:{closed_port()}", "x")),
        Case("runs", "trainer.resume=true with nothing unfinished", "error",
             lambda lab: cli("train", *[c for c in lab.common if "output_dir" not in c],
                             f"trainer.output_dir={lab.home / 'empty'}", "trainer.resume=true")),
        Case("runs", "trainer.resume=<finished run>", "error",
             lambda lab: train(lab, f"trainer.resume={lab.finished}")),
        Case("runs", "trainer.resume=<unknown run>", "error",
             lambda lab: train(lab, "trainer.resume=no-such-run")),
        Case("runs", "trainer.resume=<killed run> with another learning rate", "error",
             resume("recipe.lr=0.001")),
        Case("runs", "trainer.resume=<killed run> with a corrupt random-state file", "error",
             resume(damage=lambda f: newest(f) / "random_states_0.pkl")),
        Case("runs", "trainer.resume=<killed run> with a truncated trainer_state.json of every "
             "checkpoint", "error", resume_every_state_broken),
        Case("runs", "trainer.resume=<killed run> whose latest checkpoint is truncated "
             "(falls back with a warning)", "accept", resume_truncated_latest),
    ]


def resume_every_state_broken(lab: Lab) -> Outcome:
    folder = lab.folder(lab.killed) / "checkpoints"
    states = sorted(folder.glob("*/trainer_state.json"))
    saved = [p.read_bytes() for p in states]
    for p in states:
        p.write_bytes(b"{")
    try:
        return train(lab, "trainer.max_steps=4", "trainer.save_every=1",
                     f"trainer.resume={lab.killed}")
    finally:
        for p, data in zip(states, saved):
            p.write_bytes(data)


def file_cases() -> list[Case]:
    import torch
    from safetensors.torch import save_file

    def weights_file(lab: Lab, kind: str) -> Path:
        path = lab.home / f"w-{kind}"
        if kind == "missing":
            return path / "none.safetensors"
        if kind == "pickle":
            marker = lab.home / "pickle-ran"

            class Payload:
                def __reduce__(self):
                    return (Path.touch, (marker,))

            torch.save({"w": Payload()}, path.with_suffix(".pt"))
            return path.with_suffix(".pt")
        state = {"patch_embedding.weight": torch.zeros(3)}
        save_file(state, str(path.with_suffix(".safetensors")))
        if kind == "truncated":
            data = path.with_suffix(".safetensors").read_bytes()
            path.with_suffix(".safetensors").write_bytes(data[:40])
        return path.with_suffix(".safetensors")

    def encoder_checkpoint(kind: str) -> Callable[[Lab], Outcome]:
        def run(lab: Lab) -> Outcome:
            result = train(lab, f"encoder.pretrained={weights_file(lab, kind)}")
            if (lab.home / "pickle-ran").exists():
                return Outcome("accepted", "the pickle ran", extra_ok=False)
            return result
        return run

    def lm_folder(kind: str) -> Callable[[Lab], Outcome]:
        def run(lab: Lab) -> Outcome:
            from transformers import LlamaConfig

            folder = lab.home / f"lm-{kind}"
            if kind != "missing":
                LlamaConfig(vocab_size=64, hidden_size=8, intermediate_size=16,
                            num_hidden_layers=1, num_attention_heads=2,
                            num_key_value_heads=2).save_pretrained(folder)
            if kind == "pickle":
                marker = lab.home / "lm-pickle-ran"

                class Payload:
                    def __reduce__(self):
                        return (Path.touch, (marker,))

                torch.save({"w": Payload()}, folder / "pytorch_model.bin")
            if kind == "bad-config":
                (folder / "config.json").write_text("{ not json")
            lm = "llama2_7b" if kind == "other-architecture" else "hf"
            result = train(lab, f"lm={lm}", f"lm.pretrained={folder}")
            if (lab.home / "lm-pickle-ran").exists():
                return Outcome("accepted", "the pickle ran", extra_ok=False)
            return result
        return run

    return [
        Case("files", "encoder.pretrained missing", "error", encoder_checkpoint("missing"),
             "none.safetensors"),
        Case("files", "encoder.pretrained truncated safetensors", "error",
             encoder_checkpoint("truncated"), "w-truncated"),
        Case("files", "encoder.pretrained with keys that do not fit", "error",
             encoder_checkpoint("misfit"), "w-misfit"),
        Case("files", "encoder.pretrained a pickle with a payload (payload must not run)",
             "error", encoder_checkpoint("pickle"), "w-pickle"),
        Case("files", "lm.pretrained missing folder", "error", lm_folder("missing"), "lm-missing"),
        Case("files", "lm.pretrained folder whose pytorch_model.bin is a pickle", "error",
             lm_folder("pickle"), "lm-pickle"),
        Case("files", "lm.pretrained folder with a broken config.json", "error",
             lm_folder("bad-config"),
             "lm-bad-config"),
        Case("files", "lm=llama2_7b with a folder of another architecture", "error",
             lm_folder("other-architecture"), "lm-other-architecture"),
        Case("files", "recipe.init_from missing", "error",
             lambda lab: train(lab, "experiment=m3di_finetune_tiny",
                               f"recipe.init_from={lab.home / 'nowhere'}"), "nowhere"),
    ]


VQA_HEADER = ("Image Path,Text,Question Type,Question,Choice A,Choice B,Choice C,Choice D,Answer,"
              "Answer Choice\n")


def vqa_folder(lab: Lab, name: str, rows: str, encoding: str = "utf-8", bom: bool = False) -> Path:
    import numpy as np

    root = lab.home / f"vqa-{name}"
    (root / "case0").mkdir(parents=True, exist_ok=True)
    volume = np.random.default_rng(0).random((1, 8, 16, 16), dtype=np.float32)
    np.save(root / "case0" / "image.npy", volume)
    np.save(lab.home / "vqa-escape-outside.npy", volume)
    text = VQA_HEADER + rows
    (root / "M3D_VQA_train.csv").write_bytes((b"\xef\xbb\xbf" if bom else b"")
                                              + text.encode(encoding))
    return root


GOOD_ROW = "case0/image.npy,report,1,Which plane?,axial,sagittal,coronal,oblique,axial,A\n"


def data_cases() -> list[Case]:
    csv = "M3D_VQA_train.csv"

    def check(name: str, rows: str, **kw) -> Callable[[Lab], Outcome]:
        return lambda lab: cli("data", "check", "--format", "m3d_vqa", "--option", "size=[8,16,16]",
                               str(vqa_folder(lab, name, rows, **kw)))

    def cap(name: str, data: Callable[[str], object]) -> Callable[[Lab], Outcome]:
        def run(lab: Lab) -> Outcome:
            root = vqa_folder(lab, f"cap-{name}", GOOD_ROW)
            (root / "case0" / "text.txt").write_text("No abnormality.")
            (root / "M3D_Cap.json").write_text(json.dumps(data("case0/image.npy")))
            return cli("data", "check", "--format", "m3d_cap", "--option", "size=[8,16,16]",
                       str(root))
        return run

    def nifti(name: str, affine_value: float) -> Callable[[Lab], Outcome]:
        def run(lab: Lab) -> Outcome:
            import nibabel as nib
            import numpy as np

            root = lab.home / f"nifti-{name}"
            root.mkdir(exist_ok=True)
            volume = np.random.default_rng(0).random((16, 16, 8), dtype=np.float32) * 100
            header = nib.Nifti1Header()  # an affine nibabel would not build an image from
            header.set_data_shape(volume.shape)
            header.set_sform(np.where(np.eye(4) > 0, affine_value, 0.0), code=1)
            header.set_qform(None, code=0)
            nib.save(nib.Nifti1Image(volume, None, header), str(root / "scan.nii.gz"))
            (root / "labels.csv").write_text("image,label\nscan.nii.gz,1\n")
            return cli("data", "check", "--format", "nifti_folder", "--option", "size=[8,16,16]",
                       str(root))
        return run

    entry = lambda image: {"image": image, "text": "case0/text.txt"}  # noqa: E731
    outside = "../vqa-escape-outside.npy"
    return [
        Case("data (readers as of this commit)", "m3d_cap: json with validation: 5", "error",
             cap("types", lambda i: {"train": [entry(i)], "validation": 5, "test": []}),
             "M3D_Cap.json"),
        Case("data (readers as of this commit)", "m3d_cap: json with image: 5", "error",
             cap("image", lambda i: {"train": [{"image": 5, "text": "case0/text.txt"}],
                                     "validation": [], "test": []}), "M3D_Cap.json"),
        Case("data (readers as of this commit)", "nifti_folder: a NIfTI with an all-zero affine",
             "error", nifti("zero", 0.0), "scan.nii.gz"),
        Case("data (readers as of this commit)", "nifti_folder: a NIfTI with a NaN affine",
             "error", nifti("nan", float("nan")), "scan.nii.gz"),
        Case("data (readers as of this commit)", "m3d_vqa: a good csv", "accept",
             check("good", GOOD_ROW)),
        Case("data (readers as of this commit)", "m3d_vqa: csv with a UTF-8 BOM (accept it)",
             "accept", check("bom", GOOD_ROW, bom=True)),
        Case("data (readers as of this commit)", "m3d_vqa: csv not in UTF-8", "error",
             check("latin1", GOOD_ROW.replace("report", "r\xe9port"), encoding="latin-1"), csv),
        Case("data (readers as of this commit)", "m3d_vqa: a row with more fields than the header",
             "error", check("fields", GOOD_ROW.rstrip("\n") + ",extra\n"), csv),
        Case("data (readers as of this commit)", "m3d_vqa: image path missing", "error",
             check("missing", GOOD_ROW.replace("case0/image.npy", "case9/image.npy")), csv),
        Case("data (readers as of this commit)", "m3d_vqa: image path escaping the root (..)",
             "error", check("escape", GOOD_ROW.replace("case0/image.npy", outside)), csv),
        Case("data (readers as of this commit)", "m3d_vqa: Answer Choice names no choice",
             "error", check("choice", GOOD_ROW.replace(",A\n", ",E\n")), csv),
        Case("data (readers as of this commit)", "zoo train data=m3d_vqa without data.root",
             "error", lambda lab: cli("train", "data=m3d_vqa", "recipe.image_size=[16,32,32]"),
             "data.root"),
        Case("data (readers as of this commit)", "zoo train data=m3d_vqa with a missing root",
             "error", lambda lab: cli("train", "data=m3d_vqa", "data.root=/nonexistent",
                                      "recipe.image_size=[16,32,32]"), "/nonexistent"),
    ]


def fault_cases() -> list[Case]:
    def sqlite_race(lab: Lab) -> Outcome:
        code = ("import sys, zoo; from zoo.tracking import Tracker; "
                "print(Tracker(root=sys.argv[1], experiment='race').experiment_id)")
        root = lab.home / "race-runs"
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        procs = [subprocess.Popen([sys.executable, "-c", code, str(root)], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        results = [p.communicate(timeout=300) for p in procs]
        codes = [p.returncode for p in procs]
        if all(c == 0 for c in codes):
            return Outcome("accepted", "both processes created/opened the store")
        return Outcome("traceback", " | ".join(r[1].strip().splitlines()[-1][:100]
                                               for r in results if r[1].strip()))

    def judge_down(lab: Lab) -> Outcome:
        from zoo.tracking import Tracker

        url = f"http://127.0.0.1:{closed_port()}/v1"
        result = cli("train", *[c for c in lab.common if not c.startswith("eval.tasks")],
                     "eval.tasks=[caption]", f"eval.judge={{url:'{url}',timeout:1,retries:1}}")
        if result.kind == "accepted":
            tracker = Tracker(lab.uri)
            run = tracker.client.search_runs([tracker.experiment_id],
                                             order_by=["attributes.start_time DESC"])[0]
            note = run.data.tags.get("zoo.eval.caption", "")
            result.extra_ok = run.info.status == "FINISHED" and "not judged" in note
            result.detail = f"run {run.info.status}; note: {note[note.find('not judged'):][:160]}"
        return result

    def tracking_down(lab: Lab) -> Outcome:
        start = time.monotonic()
        result = train(lab, f"tracking.uri=http://127.0.0.1:{closed_port()}")
        result.detail += f" ({time.monotonic() - start:.1f} s)"
        return result

    return [
        Case("faults", "two processes create a fresh sqlite store at once", "accept", sqlite_race),
        Case("faults", "tracking server unreachable", "error", tracking_down),
        Case("faults", "LLM judge down during the evaluation of a training run (task not judged, "
             "run FINISHED)", "accept", judge_down),
    ]


def use_cases() -> list[Case]:
    """zoo predict, zoo chat and zoo export on the lab's finished run (docs/usage.md)."""

    def scratch(lab: Lab, name: str, content: bytes | None = None, shape=(1, 16, 32, 32)) -> str:
        import numpy as np

        path = lab.home / "use" / name
        path.parent.mkdir(exist_ok=True)
        if content is not None:
            path.write_bytes(content)
        elif name.endswith(".npy"):
            np.save(path, np.random.default_rng(0).random(shape, dtype=np.float32))
        return str(path)

    def predict(*argv: str, volume: str = "scan.npy", shape=(1, 16, 32, 32),
                questions: bytes | None = None) -> Callable[[Lab], Outcome]:
        """``zoo predict`` on the finished run; ``volume`` is made here when it is an .npy, and a
        questions file with ``questions`` as its content is passed when given."""
        def run(lab: Lab) -> Outcome:
            path = scratch(lab, volume, shape=shape) if volume.endswith(".npy") else volume
            asked = ["--questions", scratch(lab, "q.jsonl", questions)] if questions else []
            return answered(cli("predict", "--tracking-uri", lab.uri, lab.finished, path, *argv,
                                *asked))
        return run

    def answered(result: Outcome) -> Outcome:
        """An accepted prediction: the tiny model's answer text is noise, so say only that one
        was printed."""
        if result.kind == "accepted":
            result.extra_ok = result.detail.lstrip().startswith("answer:")
            result.detail = "printed an answer" if result.extra_ok else result.detail
        return result

    def export_then_predict(lab: Lab) -> Outcome:
        out = lab.home / "use" / "exported"
        result = cli("export", "--tracking-uri", lab.uri, lab.finished, str(out))
        if result.kind != "accepted":
            return result
        answer = answered(cli("-q", "predict", str(out), scratch(lab, "scan.npy"), "--question",
                              "Organ?"))
        answer.extra_ok = answer.extra_ok and (out / "model.safetensors").is_file()
        answer.detail = f"exported, then: {answer.detail}"
        return answer

    def export_into(lab: Lab) -> Outcome:
        out = lab.home / "use" / "occupied"
        out.mkdir(parents=True, exist_ok=True)
        (out / "keep.txt").write_text("someone's file")
        return cli("export", "--tracking-uri", lab.uri, lab.finished, str(out))

    def chat_missing(lab: Lab) -> Outcome:
        return cli("chat", "--tracking-uri", lab.uri, lab.finished, str(lab.home / "none.nii.gz"))

    q = ("--question", "Which organ?")
    return [
        Case("use", "zoo predict RUN scan.npy --question", "accept", predict(*q)),
        Case("use", "zoo predict without a question", "error", predict()),
        Case("use", "zoo predict a volume that does not exist", "error",
             predict(*q, volume="/nonexistent/scan.nii.gz"), names="/nonexistent/scan.nii.gz"),
        Case("use", "zoo predict an .npy without its channel axis", "error",
             predict(*q, volume="flat.npy", shape=(16, 32, 32)), names="flat.npy"),
        Case("use", "zoo predict a text file as a volume", "error",
             predict(*q, volume="/etc/hostname"), names="/etc/hostname"),
        Case("use", "zoo predict --questions: not UTF-8", "error",
             predict(questions='{"question": "caf\xe9"}\n'.encode("latin-1")), names="q.jsonl"),
        Case("use", "zoo predict --questions: invalid JSON on line 2", "error",
             predict(questions=b'{"question": "a"}\n{oops\n'), names="q.jsonl"),
        Case("use", "zoo predict --questions: a line without a question", "error",
             predict(questions=b'{"task": "vqa_open"}\n'), names="q.jsonl"),
        Case("use", "zoo predict --temperature -1", "error",
             predict(*q, "--temperature", "-1"), names="--temperature"),
        Case("use", "zoo predict --max-new-tokens 0", "error",
             predict(*q, "--max-new-tokens", "0"), names="--max-new-tokens"),
        Case("use", "zoo predict --task vqa", "error", predict(*q, "--task", "vqa"),
             names="vqa"),
        Case("use", "zoo predict with an unknown run id", "error",
             lambda lab: cli("predict", "--tracking-uri", lab.uri, "0123456789abcdef",
                             scratch(lab, "scan.npy"), *q)),
        Case("use", "zoo chat on a volume that does not exist", "error", chat_missing,
             names="none.nii.gz"),
        Case("use", "zoo export RUN OUT, then zoo predict OUT", "accept", export_then_predict),
        Case("use", "zoo export into a folder that holds other files", "error", export_into,
             names="occupied"),
        Case("use", "zoo export of an unknown run id", "error",
             lambda lab: cli("export", "--tracking-uri", lab.uri, "0123456789abcdef",
                             str(lab.home / "use" / "x"))),
    ]


def cli_cases() -> list[Case]:
    return [
        Case("command line", "zoo list encodrs", "error", lambda lab: cli("list", "encodrs")),
        Case("command line", "zoo params recipe=lamd", "error",
             lambda lab: cli("params", "recipe=lamd")),
        Case("command line", "zoo params --stage nope", "error",
             lambda lab: cli("params", "--stage", "nope")),
        Case("command line", "zoo params encoder.depth=-1", "error",
             lambda lab: cli("params", "+encoder.depth=-1")),
        Case("command line", "zoo compare (neither --parent nor --runs)", "error",
             lambda lab: cli("compare")),
        Case("command line", "zoo compare --parent <unknown>", "error",
             lambda lab: cli("compare", "--tracking-uri", lab.uri, "--parent", "nope")),
        Case("command line", "zoo sweep launcher=ray", "error",
             lambda lab: cli("sweep", "launcher=ray")),
        Case("command line", "zoo eval (no run id)", "error", lambda lab: cli("eval")),
        Case("command line", "zoo bench --strict (without --check)", "error",
             lambda lab: cli("bench", "--strict")),
    ]


GROUPS = {"config": value_cases, "runs": run_cases, "files": file_cases, "data": data_cases,
          "faults": fault_cases, "use": use_cases, "cli": cli_cases}


# ---------------------------------------------------------------- report
def commit() -> str:
    from zoo.tracking import git_commit

    return git_commit()


def machine() -> str:
    cores = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.machine()} {platform.system()}, {cores} cores, load {load:.1f} at start"


def totals(cases: list[Case]) -> dict[str, int]:
    kinds = [c.outcome.kind for c in cases]
    return {"tried": len(cases), "clear error": kinds.count("clear error"),
            "traceback": kinds.count("traceback"), "unclear error": kinds.count("unclear error"),
            "accepted": kinds.count("accepted"),
            "accepted wrongly": sum(c.outcome.kind == "accepted" and not c.right for c in cases),
            "right": sum(c.right for c in cases)}


def render(cases: list[Case], command: str, seconds: float) -> tuple[str, str]:
    t = totals(cases)
    head = (f"Measured by `{command}` at commit `{commit()}` on {machine()}, "
            f"{seconds:.0f} s.")
    summary = "\n".join([
        head, "",
        "| tried | clear error | traceback | unclear error | accepted (of which wrongly) | as "
        "expected |", "|---|---|---|---|---|---|",
        f"| {t['tried']} | {t['clear error']} | {t['traceback']} | {t['unclear error']} | "
        f"{t['accepted']} ({t['accepted wrongly']}) | {t['right']} |"])
    rows = ["# Battery of bad inputs and faults", "",
            "Written by `experiments/battery.py` (do not edit by hand; docs/guarantees.md says "
            "what each case should get).", "", summary, "",
            "| group | case | expected | got | as expected | what the user saw |",
            "|---|---|---|---|---|---|"]
    for c in cases:
        detail = c.outcome.detail.replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {c.group} | {c.name.replace('|', '/')} | {c.expect} | {c.outcome.kind} | "
                    f"{'yes' if c.right else '**no**'} | {detail} |")
    return summary, "\n".join(rows) + "\n"


def update_guarantees(summary: str, path: Path) -> None:
    text = path.read_text()
    start, end = text.index(BLOCK_START) + len(BLOCK_START), text.index(BLOCK_END)
    path.write_text(text[:start] + "\n" + summary + "\n" + text[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "battery.md"))
    parser.add_argument("--only", choices=sorted(GROUPS), action="append",
                        help="run these groups only (no docs are written)")
    args = parser.parse_args(argv)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    home = Path(tempfile.mkdtemp(prefix="zoo-battery-"))
    cwd = os.getcwd()
    os.chdir(home)
    try:
        lab = Lab(home)
        cases = [case for name in (args.only or GROUPS) for case in GROUPS[name]()]
        for case in cases:
            begin = time.perf_counter()
            case.outcome = case.run(lab)
            if case.outcome.kind == "clear error" and case.names not in case.outcome.detail:
                case.outcome = Outcome("unclear error", f"does not name {case.names!r}: "
                                                        f"{case.outcome.detail}")
            case.seconds = time.perf_counter() - begin
            print(f"[{'ok' if case.right else 'NO'}] {case.group}: {case.name}: "
                  f"{case.outcome.kind}: {case.outcome.detail}", flush=True)
    finally:
        os.chdir(cwd)
        shutil.rmtree(home, ignore_errors=True)
    seconds = time.perf_counter() - start
    summary, table = render(cases, "python experiments/battery.py", seconds)
    print(summary)
    if not args.only:
        Path(args.out).write_text(table)
        update_guarantees(summary, ROOT / "docs" / "guarantees.md")
    print(json.dumps(totals(cases)))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    import zoo  # noqa: F401  (environment fixes first)

    sys.exit(main())
