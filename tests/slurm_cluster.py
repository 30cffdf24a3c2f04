"""A one-node Slurm cluster on this machine for tests: munged, slurmctld and slurmd, all as root.

    cluster = SlurmCluster.start()          # raises SlurmUnavailable (say why) when it cannot
    job = cluster.sbatch("slurm/train.sbatch", "--ntasks-per-node=2", env={...}, cwd=ROOT)
    record = cluster.wait_done(job)         # its jobcomp record: {"JobState": "COMPLETED", ...}
    cluster.stop()                          # cancels what is left, stops the daemons by PID

Debian's slurm-wlm 22.05 and munge; everything (keys, sockets, state, logs) lives in a fresh
directory under /tmp, on free ports, so it neither needs nor touches /etc/slurm or a system munged.
What this version needs, found by trying:
- munged refuses a socket whose directory is not executable by all, and a pytest tmp directory
  sits under a 0700 one: hence mkdtemp in /tmp, chmod 0711.
- Clients find the cluster by SLURM_CONF (without it they try DNS SRV records and give up).
- A requeued job is held until the previous run's credential expires (BeginTime = requeue time +
  cred_expire + 1, 121 s by default): AuthInfo cred_expire=5 keeps requeue tests short.
- SlurmdParameters=config_overrides: the node has the CPUs the config says, whatever the machine,
  so the 2-task jobs fit on any CI machine.
- No accounting daemon, so no sacct: jobcomp/filetxt writes one line per job end (and one with
  JobState=PENDING per requeue), which is the job history the tests read.
- The mpi/pmix plugins log load errors at start-up (no PMIx library); harmless with MpiDefault=none.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo", "srun")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run here (binaries missing, not root, or the daemons would not start)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _conf(root: Path, host: str, cpus: int) -> str:
    return f"""\
ClusterName=biodistill
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket,cred_expire=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
MinJobAge=10
KillWait=5
MailProg=/bin/true
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    def __init__(self, root: Path, cpus: int) -> None:
        self.root, self.cpus = root, cpus
        self.host = socket.gethostname().split(".")[0]  # NOTE: slurmd finds its node by this
        self.procs: dict[str, subprocess.Popen] = {}
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))
        }
        self.env = {**clean, "SLURM_CONF": str(root / "slurm.conf")}

    @staticmethod
    def unavailable() -> str | None:
        """Why Slurm cannot run here, or None."""
        missing = [b for b in (*DAEMONS, *CLIENTS, "munge") if shutil.which(b) is None]
        if missing:
            return (
                f"Slurm is not installed (no {', '.join(missing)}): "
                "apt-get install slurm-wlm munge (.ci/run does)"
            )
        if os.geteuid() != 0:
            return "the test cluster runs its daemons as root"
        return None

    @classmethod
    def start(cls, cpus: int = 2, timeout: float = 60.0) -> SlurmCluster:
        if reason := cls.unavailable():
            raise SlurmUnavailable(reason)
        root = Path(tempfile.mkdtemp(prefix="biodistill-slurm-", dir="/tmp"))
        root.chmod(0o711)
        cluster = cls(root, cpus)
        try:
            cluster._start(timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start(self, timeout: float) -> None:
        root = self.root
        (root / "state").mkdir()
        (root / "spool").mkdir()
        key = root / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        (root / "slurm.conf").write_text(_conf(root, self.host, self.cpus))
        self._spawn(
            "munged",
            "munged",
            "--foreground",
            f"--key-file={key}",
            f"--socket={root}/munge.socket",
            f"--pid-file={root}/munged.pid",
            f"--log-file={root}/munged.log",
            f"--seed-file={root}/munged.seed",
        )
        self._until(lambda: (root / "munge.socket").exists(), timeout, "munged made no socket")
        conf = str(root / "slurm.conf")
        self._spawn("slurmctld", "slurmctld", "-D", "-c", "-f", conf)  # -c: no old state
        self._spawn("slurmd", "slurmd", "-D", "-f", conf)
        self._until(self._node_idle, timeout, "the node did not come up idle")

    def _spawn(self, name: str, *cmd: str) -> None:
        log = open(self.root / f"{name}.out", "wb")  # noqa: SIM115 - lives as long as the daemon
        self.procs[name] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )

    def _node_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip()
        return out == "idle"

    def _until(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise SlurmUnavailable(f"{what} ({', '.join(dead) or 'timeout'}): {self.logs()}")
            time.sleep(0.2)

    def logs(self, lines: int = 8) -> str:
        tails = []
        for f in sorted(self.root.glob("*.out")) + sorted(self.root.glob("*.log")):
            text = f.read_text(errors="replace").strip().splitlines()[-lines:]
            tails.append(f"--- {f.name}\n" + "\n".join(text))
        return "\n".join(tails)

    # ---------------------------------------------------------------- clients

    def run(self, *cmd: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, check=check, timeout=60, **kwargs
        )

    def sbatch(
        self, script: str | Path, *options: str, args: tuple = (), env: dict, cwd: Path
    ) -> int:
        """Submit `script` with sbatch `options` and script `args`; returns the job id.

        `env` is added to the job's environment (sbatch exports the caller's); `cwd` becomes
        SLURM_SUBMIT_DIR.
        """
        out = subprocess.run(
            ["sbatch", "--parsable", *options, str(script), *args],
            env={**self.env, **env},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            raise AssertionError(f"sbatch failed: {out.stderr.strip()}")
        return int(out.stdout.strip().split(";")[0])

    def queued(self, job: int) -> bool:
        """Whether the job (or any task of an array) is still pending or running."""
        out = self.run("squeue", "-h", "-j", str(job), "-o", "%i %T", check=False)
        return bool(out.stdout.strip())

    def history(self, job: int) -> list[dict[str, str]]:
        """The job's jobcomp records, oldest first (a requeue adds one with JobState=PENDING)."""
        path = self.root / "jobcomp.txt"
        lines = path.read_text().splitlines() if path.exists() else []
        records = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in lines]
        return [r for r in records if r.get("JobId") == str(job)]

    def wait_done(self, job: int, timeout: float = 300.0) -> dict[str, str]:
        """Wait for the job to end for good; its last jobcomp record."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.history(job)
            if records and records[-1].get("JobState") in FINAL_STATES and not self.queued(job):
                return records[-1]
            if time.monotonic() > deadline:
                self.run("scancel", str(job), check=False)
                raise AssertionError(f"job {job} not done after {timeout} s: {records}")
            time.sleep(0.25)

    def wait_gone(self, job: int, timeout: float = 300.0) -> None:
        """Wait until squeue no longer lists the job (all tasks of an array)."""
        deadline = time.monotonic() + timeout
        while self.queued(job):
            if time.monotonic() > deadline:
                self.run("scancel", str(job), check=False)
                raise AssertionError(f"job {job} still queued after {timeout} s")
            time.sleep(0.25)

    # ---------------------------------------------------------------- shutdown

    def stop(self) -> None:
        """Cancel every job, then stop the daemons this object started (by PID) and clean up."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--user=root", check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                out = self.run("squeue", "-h", check=False)
                if out.returncode != 0 or not out.stdout.strip():
                    break
                time.sleep(0.25)
        for name in reversed(DAEMONS):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)
