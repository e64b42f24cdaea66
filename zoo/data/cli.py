"""``zoo data synth | prepare | check`` (argparse; called from ``zoo.cli``).

Bad or missing data exits with code 1 and one line ``zoo data <cmd>: <file>[ row N]: <reason>``;
a wrong option exits with code 2 and one line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _print_counts(info: dict[str, Any]) -> None:
    if "samples" not in info:
        print(json.dumps(info, indent=1))
        return
    print(f"{info['name']}: {info['root']}")
    print(f"split manifest {info['manifest']} sha256 {info['split_hash']}")
    tasks = sorted({t for counts in info["samples"].values() for t in counts})
    print(f"{'split':<12}{'cases':>7}" + "".join(f"{t:>12}" for t in tasks))
    for split, counts in info["samples"].items():
        print(f"{split:<12}{info['cases'][split]:>7}" + "".join(f"{counts.get(t, 0):>12}" for t in tasks))


def cmd_synth(args: argparse.Namespace) -> int:
    from zoo.data.synth import read_synth, write_benchmark

    out = write_benchmark(args.out, cases=args.cases, size=args.size, seed=args.seed,
                          family=args.family, progress=True)
    _print_counts(read_synth(out).describe())
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from zoo.data.prepare import prepare, spec_from
    from zoo.errors import ConfigError

    spec = spec_from(args.modality, args.size, args.window, args.spacing, crop=not args.no_crop,
                     preset=args.preset, orientation=args.orientation)
    if args.table:
        from zoo.data.table import prepare_table

        if args.series:
            raise ConfigError("--series applies to folders without a table; a table names the "
                              "series per row (column 'series')")
        source = prepare_table(args.inputs, args.table, args.out, spec, workers=args.workers)
        print(f"prepared {source.describe()['name']} data into {args.out} (size "
              f"{list(spec.size)}; spec in {args.out}/prepared.json)")
        print(source.split_summary())
        for split in ("validation", "test"):
            if not source.items(split):
                print(f"note: the {split} split is empty; with few patients set data.fractions "
                      f"(e.g. [0.6,0.2,0.2]) or more cases (docs/data.md)")
        print(f"train: zoo train data=table data.root={args.out}")
        return 0
    paths = prepare(args.inputs, args.out, spec, workers=args.workers, series=args.series)
    print(f"prepared {len(paths)} case(s) into {args.out}")
    return 0


def _option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"options are key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _print_leaks(leaks: dict[str, Any], fmt: str, shown: int = 10) -> None:
    exact, near = leaks["exact"], leaks["near"]
    if not exact and not near:
        print(f"no volume is in more than one split ({leaks['volumes']} volumes; exact content "
              f"hash and near-duplicate fingerprint)")
        return
    print(f"LEAK: {fmt}: {len(exact)} volume content(s) in more than one split (exact), "
          f"{len(near)} near-duplicate pair(s) across splits (fingerprint within "
          f"{leaks['tolerance']})")
    where = lambda v: f"{v['image']} [{v['split']}, case {v['case']}]"  # noqa: E731
    lines = [" = ".join(where(v) for v in group) for group in exact]
    lines += [f"{where(p['a'])} ~ {where(p['b'])} ({p['distance']})" for p in near]
    for line in lines[:shown]:
        print(f"  {line}")
    if len(lines) > shown:
        print(f"  ... {len(lines) - shown} more")
    print("  remedy: a hash split with these cases grouped (--groups FILE, then "
          "data.split_by=hash data.patients=FILE; docs/data.md 'Leaks across splits')")


def _write_groups(path: str, groups: dict[str, str]) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["case", "patient_id"])
        writer.writerows(sorted(groups.items()))
    print(f"wrote {len(groups)} grouped case(s) to {path}")


def cmd_check(args: argparse.Namespace) -> int:
    from zoo.data.check import check

    info = check(args.format, args.path, **dict(args.option or []))
    _print_counts(info)
    if "leaks" not in info:
        print("ok")
        return 0
    _print_leaks(info["leaks"], args.format)
    if args.groups:
        _write_groups(args.groups, info["leaks"]["groups"])
    leaked = bool(info["leaks"]["exact"] or info["leaks"]["near"])
    print("ok" if not leaked else "ok (readable; see LEAK above)")
    return 1 if leaked and args.strict else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("synth", help="write the synthetic phantom benchmark (M3D formats)")
    p.add_argument("--out", required=True)
    p.add_argument("--cases", type=int, default=200)
    p.add_argument("--size", type=int, nargs=3, default=(32, 64, 64), metavar=("D", "H", "W"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--family", choices=("abdomen", "head", "both"), default="both")
    p.set_defaults(func=cmd_synth)
    p = sub.add_parser("prepare", help="MONAI preparation of NIfTI / DICOM volumes into M3D npy")
    p.add_argument("--in", dest="inputs", required=True, help="NIfTI file, DICOM folder or a folder of them")
    p.add_argument("--table", help="a table (.csv or .jsonl) listing the images of --in with their "
                                   "reports, questions and masks: prepares them for data=table "
                                   "(docs/data.md 'Bring your own data')")
    p.add_argument("--out", required=True)
    p.add_argument("--modality", choices=("ct", "mri"), default="ct")
    p.add_argument("--size", type=int, nargs=3, default=(32, 256, 256), metavar=("D", "H", "W"))
    p.add_argument("--window", default="abdomen", help="CT window preset or 'low,high' HU")
    p.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("d", "h", "w"),
                   help="resample to this spacing (mm) before resizing")
    p.add_argument("--no-crop", action="store_true", help="skip the foreground crop")
    p.add_argument("--preset", choices=("zoo", "segvol"), default="zoo",
                   help="segvol: SegVol's own steps (stored axes, foreground normalisation, "
                        "transpose, min-max, pad to --size, crop; no resize)")
    p.add_argument("--orientation", default=None,
                   help="with --preset segvol: reorient to these axis codes first (e.g. RAS)")
    p.add_argument("--series", help="in DICOM folders holding several series, the one to use "
                                    "(SeriesInstanceUID or SeriesNumber); without it such a "
                                    "folder is refused, listing its series")
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_prepare)
    p = sub.add_parser("check", help="validate a data set and print counts per split and task")
    p.add_argument("--format", required=True)
    p.add_argument("path")
    p.add_argument("--option", type=_option, action="append", help="builder kwarg key=value")
    p.add_argument("--groups", metavar="FILE", help="write a csv 'case,patient_id' tying together "
                                                    "cases whose volumes are copies (exact or "
                                                    "near), for data.patients=FILE")
    p.add_argument("--strict", action="store_true", help="exit 1 when a volume is in more than "
                                                         "one split")
    p.set_defaults(func=cmd_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    from zoo.errors import DataError, MissingFileError, ZooError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ZooError as err:
        print(f"zoo data {args.command}: {err}", file=sys.stderr)
        return 1 if isinstance(err, (DataError, MissingFileError)) else 2


if __name__ == "__main__":
    sys.exit(main())
