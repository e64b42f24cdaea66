"""Multi-node training on Slurm: one ``accelerate launch`` per node, its rendezvous taken from
Slurm's environment (docs/scale.md).

A job of N nodes runs one task per node (``#SBATCH --ntasks-per-node=1``; the sweep's submitit
launcher: ``tasks_per_node: 1``). On each node :func:`slurm_rendezvous` reads the node count
(``SLURM_JOB_NUM_NODES``), this node's rank (``SLURM_NODEID``), the first host of
``SLURM_JOB_NODELIST`` (expanded by submitit's parser) as the master address, the GPUs of the node
(``SLURM_GPUS_ON_NODE``, else ``SLURM_GPUS_PER_NODE``, else CUDA's device count) and a port that
every node derives alike from the job id (``MASTER_PORT`` when set). :func:`accelerate_command`
turns it into::

    python -m accelerate.commands.launch --config_file C --num_machines N --machine_rank R
        --num_processes N*G --main_process_ip HOST0 --main_process_port P -m zoo ARGS...

and torchrun, inside ``accelerate launch``, starts G processes per node that meet at HOST0:P.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from zoo.errors import ConfigError, RunError
from zoo.launch import accelerate_config

# Ports derived from the job id: PORT_BASE + job id % PORT_SPAN (the same on every node of a job,
# different for jobs that share a node).
PORT_BASE, PORT_SPAN = 20000, 20000


@dataclass(frozen=True)
class Rendezvous:
    """Where the processes of a multi-node job meet, and this node's place among them."""

    num_nodes: int
    node_rank: int
    processes_per_node: int
    master_addr: str
    master_port: int

    @property
    def num_processes(self) -> int:
        return self.num_nodes * self.processes_per_node


def _env_int(key: str) -> int | None:
    value = os.environ.get(key)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"Slurm environment: {key}={value!r} is not an integer") from None


def gpus_on_node() -> int | None:
    """GPUs Slurm gave this node: ``SLURM_GPUS_ON_NODE``, else the count in
    ``SLURM_GPUS_PER_NODE`` (``8``, ``h100:8``, ``gpu:h100:8(IDX:0-7)``); None when neither is
    set."""
    count = _env_int("SLURM_GPUS_ON_NODE")
    if count is not None:
        return count
    value = os.environ.get("SLURM_GPUS_PER_NODE")
    if not value:
        return None
    match = re.fullmatch(r"(?:[\w.-]+:)*(\d+)(?:\(.*\))?", value.strip())
    if match is None:
        raise ConfigError(f"Slurm environment: SLURM_GPUS_PER_NODE={value!r} names no GPU count")
    return int(match.group(1))


def slurm_rendezvous(processes_per_node: int | None = None, port: int | None = None) -> Rendezvous:
    """The rendezvous of the Slurm job this process runs in (see the module docstring).

    ``processes_per_node`` and ``port`` override what the environment says (``--processes-per-node``
    is how a CPU-only allocation or a partial use of the node's GPUs is chosen)."""
    from submitit.slurm.slurm import SlurmJobEnvironment

    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        raise RunError("not inside a Slurm job (SLURM_JOB_ID is unset): run this on every node "
                       "with srun, or through `zoo sweep launcher=submitit_slurm`")
    num_nodes = _env_int("SLURM_JOB_NUM_NODES") or _env_int("SLURM_NNODES") or 1
    node_rank = _env_int("SLURM_NODEID")
    if node_rank is None:
        if num_nodes > 1:
            raise RunError(f"Slurm job {job_id} has {num_nodes} nodes but SLURM_NODEID is unset: "
                           "start one task per node with srun")
        node_rank = 0
    if not 0 <= node_rank < num_nodes:
        raise RunError(f"Slurm environment: SLURM_NODEID={node_rank} outside 0..{num_nodes - 1}")
    hosts = list(SlurmJobEnvironment().hostnames)
    if len(hosts) != num_nodes:
        nodelist = os.environ.get("SLURM_JOB_NODELIST")
        raise RunError(f"Slurm environment: SLURM_JOB_NODELIST={nodelist!r} expands to "
                       f"{len(hosts)} host(s), SLURM_JOB_NUM_NODES says {num_nodes}")
    if processes_per_node is None:
        processes_per_node = gpus_on_node()
    if processes_per_node is None:
        import torch

        processes_per_node = torch.cuda.device_count() or None
    if not processes_per_node or processes_per_node < 1:
        raise ConfigError("cannot tell how many processes to start per node: Slurm gave no GPU "
                          "count (SLURM_GPUS_ON_NODE / SLURM_GPUS_PER_NODE) and CUDA sees no "
                          "device; pass --processes-per-node N")
    if port is None:
        port = _env_int("MASTER_PORT")
    if port is None:
        digits = re.sub(r"\D", "", job_id)
        port = PORT_BASE + int(digits or 0) % PORT_SPAN
    return Rendezvous(num_nodes, node_rank, int(processes_per_node), hosts[0], int(port))


def accelerate_command(rendezvous: Rendezvous, config: str | Path,
                       target: Sequence[str]) -> list[str]:
    """``accelerate launch`` of ``target`` (``["-m", "zoo", "train", ...]`` or a script and its
    arguments) on this node, with the rendezvous on the command line (it overrides the config
    file's process counts and addresses)."""
    r = rendezvous
    return [sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(accelerate_config(config)),
            "--num_machines", str(r.num_nodes), "--machine_rank", str(r.node_rank),
            "--num_processes", str(r.num_processes),
            "--main_process_ip", r.master_addr, "--main_process_port", str(r.master_port),
            *target]


def run_node(config: str | Path, target: Sequence[str], processes_per_node: int | None = None,
             port: int | None = None) -> int:
    """Run this node's share of a multi-node job; returns ``accelerate launch``'s exit code."""
    command = accelerate_command(slurm_rendezvous(processes_per_node, port), config, target)
    print("zoo launch: " + " ".join(command), flush=True)
    return subprocess.run(command, check=False).returncode


def sweep_node_job(overrides: list[str], parent_id: str | None, variant: str,
                   seed: int | None = None, config: str | Path = "ddp") -> dict[str, Any]:
    """One sweep job on a multi-process Slurm allocation (submitit runs it on every node): every
    process runs :func:`zoo.sweep.run_job` under ``accelerate launch``."""
    target = ["-m", "zoo.launch", "job", "--variant", variant,
              *(["--parent", parent_id] if parent_id else []),
              *(["--seed", str(seed)] if seed is not None else []), "--", *overrides]
    code = run_node(config, target)
    if code != 0:
        raise RunError(f"sweep job {variant}: accelerate launch exited with code {code} on node "
                       f"{os.environ.get('SLURM_NODEID', '0')} (see the job's log)")
    return {"variant": variant}


def sweep_job_function(settings: Mapping[str, Any]) -> Callable[..., dict[str, Any]]:
    """What the sweep's submitit launcher runs per job: :func:`zoo.sweep.run_job` in the task
    when a job is one process, else :func:`sweep_node_job` on every node with the experiment's
    ``sweep.accelerate_config`` (default ``ddp``). A multi-process job needs one task per node
    (``tasks_per_node: 1``): ``accelerate launch`` starts the GPU processes itself."""
    from zoo.sweep import run_job

    processes = int(settings.get("nodes") or 1) * int(settings.get("gpus_per_node") or 1)
    config = settings.get("accelerate_config")
    if processes == 1 and not config:
        return run_job
    if int(settings.get("tasks_per_node") or 1) != 1:
        raise ConfigError(f"launcher submitit_slurm: tasks_per_node="
                          f"{settings.get('tasks_per_node')} with {processes} processes per job; "
                          "set tasks_per_node: 1 (one accelerate launch per node starts them)")
    return functools.partial(sweep_node_job, config=config or "ddp")
