"""``python -m zoo.launch``: the shipped Accelerate configs and the Slurm multi-node launcher.

    python -m zoo.launch config fsdp                      # path of a shipped config
    srun python -m zoo.launch slurm --config fsdp train recipe=lamed ...   # on every node
    python -m zoo.launch job --variant NAME [--parent ID] [--seed N] -- OVERRIDES  # one sweep job (used
                                                          # by the sweep's multi-node launcher)

Input problems print one line and exit with code 2, as ``zoo`` does (docs/scale.md).
"""

from __future__ import annotations

import argparse
import sys

from zoo.errors import ZooError
from zoo.launch import ACCELERATE_CONFIGS, accelerate_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m zoo.launch")
    sub = parser.add_subparsers(dest="command", required=True)
    config = sub.add_parser("config", help="print the path of a shipped Accelerate config")
    config.add_argument("name", help=f"one of {', '.join(ACCELERATE_CONFIGS)}")
    slurm = sub.add_parser("slurm", help="run `accelerate launch -m zoo ARGS` on this node of a "
                           "Slurm job, rendezvous from Slurm's environment")
    slurm.add_argument("--config", default="ddp",
                       help=f"{', '.join(ACCELERATE_CONFIGS)} or a config file (default ddp)")
    slurm.add_argument("--processes-per-node", type=int, default=None,
                       help="default: the GPUs Slurm gave the node")
    slurm.add_argument("--port", type=int, default=None,
                       help="rendezvous port (default: MASTER_PORT, else derived from the job id)")
    slurm.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
    slurm.add_argument("args", nargs=argparse.REMAINDER, help="a zoo command and its overrides")
    job = sub.add_parser("job", help="one sweep job in every process of an accelerate launch")
    job.add_argument("--variant", required=True)
    job.add_argument("--parent", default=None, help="MLflow run id of the sweep")
    job.add_argument("--seed", type=int, default=None, help="the job's seed (a tag of its run)")
    job.add_argument("overrides", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "config":
            print(accelerate_config(args.name))
        elif args.command == "slurm":
            from zoo.launch.slurm import accelerate_command, run_node, slurm_rendezvous

            target = ["-m", "zoo", *args.args]
            if args.dry_run:
                rendezvous = slurm_rendezvous(args.processes_per_node, args.port)
                print(" ".join(accelerate_command(rendezvous, args.config, target)))
                return 0
            return run_node(args.config, target, args.processes_per_node, args.port)
        else:
            from zoo.sweep import run_job

            overrides = [o for o in args.overrides if o != "--"]
            run_job(overrides, args.parent, args.variant, args.seed)
    except ZooError as err:
        print(f"zoo launch {args.command}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
