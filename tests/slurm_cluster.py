"""A real one-node SLURM cluster for the tests: Debian's slurm-wlm and munge, started by hand
(there is no systemd) in a private folder, stopped by pid.

Every command that talks to it (sbatch, squeue, the Snakemake jobs) finds it through
``SLURM_CONF``, which :meth:`LocalSlurm.start` sets in this process's environment.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")
# Generous fake hardware: the rules ask for their paper-scale memory (pretrain 64 GB), and the
# GPU rules for a GPU each; nothing is enforced (no cgroups, no accounting).
NODE_MEMORY_MB = 256_000
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
FAKE_GPU_FILES = ("/dev/null", "/dev/zero")  # a gres needs a device file; any will do
NODE_GPUS = len(FAKE_GPU_FILES)


def missing_commands() -> list[str]:
    return [c for c in DAEMONS if shutil.which(c) is None]


class LocalSlurm:
    """slurmctld + slurmd for a node ``localhost`` with this machine's CPUs, partition ``debug``,
    ``NODE_GPUS`` fake GPUs (gres on /dev/null), no accounting database: finished jobs stay in
    ``squeue`` for ``MinJobAge`` seconds, which is what the profile's squeue status query needs."""

    def __init__(self):
        # Not under pytest's tmp: munged runs as the munge user, who must reach its files.
        self.root = Path(tempfile.mkdtemp(prefix="conclugen-slurm-"))
        self.root.chmod(0o755)
        self.conf = self.root / "slurm.conf"
        self.pids: dict[str, Path] = {}

    def _write_config(self) -> None:
        r = self.root
        for d in ("state", "spool", "log", "munge"):
            (r / d).mkdir(exist_ok=True)
        munge = pwd.getpwnam("munge")
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for p in (r / "munge", key):
            os.chown(p, munge.pw_uid, munge.pw_gid)
        (r / "munge").chmod(0o755)  # clients need to reach the socket
        cpus = os.cpu_count() or 1
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=conclugen-test",
                    "SlurmctldHost=localhost",
                    "SlurmUser=root",
                    "AuthType=auth/munge",
                    f"StateSaveLocation={r}/state",
                    f"SlurmdSpoolDir={r}/spool",
                    f"SlurmctldPidFile={r}/slurmctld.pid",
                    f"SlurmdPidFile={r}/slurmd.pid",
                    f"SlurmctldLogFile={r}/log/slurmctld.log",
                    f"SlurmdLogFile={r}/log/slurmd.log",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core_Memory",
                    "SlurmdParameters=config_overrides",  # the fake memory and GPUs
                    # slurmd fetches this config and keeps a copy in /run/slurm/conf, where the
                    # jobs' own srun finds it: the Snakemake job step drops SLURM_CONF.
                    "SlurmctldParameters=enable_configless",
                    "MinJobAge=600",
                    "ReturnToService=2",
                    "SchedulerParameters=sched_interval=1",
                    "GresTypes=gpu",
                    f"NodeName=localhost CPUs={cpus} RealMemory={NODE_MEMORY_MB} "
                    f"Gres=gpu:{NODE_GPUS} State=UNKNOWN",
                    "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        (r / "gres.conf").write_text(
            "".join(f"NodeName=localhost Name=gpu File={f}\n" for f in FAKE_GPU_FILES)
        )

    def start(self) -> None:
        missing = missing_commands()
        if missing:
            raise RuntimeError(f"SLURM is not installed (missing {missing}): run `make test`")
        self._write_config()
        os.environ["SLURM_CONF"] = str(self.conf)
        r = self.root
        # munged on its default socket: slurmd, fetching its config from slurmctld (configless),
        # authenticates before it has read any AuthInfo. One already serving it is used as is.
        if not MUNGE_SOCKET.exists():
            MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
            munge = pwd.getpwnam("munge")
            os.chown(MUNGE_SOCKET.parent, munge.pw_uid, munge.pw_gid)
            MUNGE_SOCKET.parent.chmod(0o755)
            munged = [
                "munged", f"--key-file={r}/munge/munge.key", f"--pid-file={r}/munge/munged.pid",
                f"--log-file={r}/munge/munged.log", f"--seed-file={r}/munge/munged.seed",
            ]  # fmt: skip
            subprocess.run(["runuser", "-u", "munge", "--", *munged], check=True)
            self.pids["munged"] = r / "munge" / "munged.pid"
            _wait(MUNGE_SOCKET.exists, 20, "munged did not start")
        subprocess.run(["slurmctld", "-i", "-f", str(self.conf)], check=True)
        self.pids["slurmctld"] = r / "slurmctld.pid"
        subprocess.run(["slurmd", "-N", "localhost", "--conf-server", "localhost"], check=True)
        self.pids["slurmd"] = r / "slurmd.pid"
        _wait(self._node_idle, 60, f"the node did not come up; see {r}/log")

    def _node_idle(self) -> bool:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True
        ).stdout
        return out.strip() == "idle"

    def jobs(self) -> list[dict]:
        """Every job slurmctld still lists (running, pending, or finished within MinJobAge):
        id, name (Snakemake's run ID), state, gres (the GPUs it asked for), comment (the
        plugin's ``rule_<rule>_wildcards_<values>``)."""
        out = subprocess.run(
            ["scontrol", "show", "job", "--oneliner"], capture_output=True, text=True
        ).stdout  # exit status 1 and "No jobs in the system" when there are none
        jobs = []
        for line in out.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if "JobId" not in fields:
                continue
            gres = fields.get("TresPerJob", "") + fields.get("TresPerNode", "")
            jobs.append(
                dict(
                    id=fields["JobId"], name=fields["JobName"], state=fields["JobState"],
                    gres=gres, comment=fields.get("Comment", ""),
                )
            )  # fmt: skip
        return jobs

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "--signal=KILL", "--user=root"], check=False)
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = self.pids.get(name)
            if pid_file is None or not pid_file.exists():
                continue
            pid = int(pid_file.read_text().split()[0])
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            _wait(lambda pid=pid: not _alive(pid), 20, f"{name} did not stop")
        os.environ.pop("SLURM_CONF", None)
        conf_link = Path("/run/slurm/conf")  # slurmd's pointer to its config copy, ours
        if conf_link.is_symlink() and str(self.root) in os.readlink(conf_link):
            conf_link.unlink()
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Running, and not a zombie (a daemon's parent here may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait(condition, seconds: float, message: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(message)
        time.sleep(0.2)
