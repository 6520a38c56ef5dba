"""A real fsched cluster on loopback for the scheduler's end-to-end tests: MUNGE,
fschedctld -D and one or more fschedd -D, configured by a generated fsched.conf,
driven through the real sbatch/squeue/scontrol/scancel/sinfo commands."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cgroup2_mount() -> Path | None:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        f = line.split()
        if len(f) > 2 and f[2] == "cgroup2":
            return Path(f[1])
    return None


def start_munge():
    subprocess.run([str(REPO / "scripts/start-munge.sh")], check=True, timeout=60)


def live_procs_in(d: Path, comm: str | None = None) -> list[int]:
    """Live (not zombie) processes whose cwd is d, only those named `comm` if given."""
    found = []
    for e in os.scandir("/proc"):
        if not e.name.isdigit():
            continue
        try:
            if comm is not None and Path(f"/proc/{e.name}/comm").read_text().strip() != comm:
                continue
            if os.readlink(f"/proc/{e.name}/cwd") != str(d):
                continue
            st = Path(f"/proc/{e.name}/stat").read_text()
            if st[st.rfind(")") + 2] in "ZX":
                continue
            found.append(int(e.name))
        except OSError:
            pass
    return found


class Cluster:
    """fschedctld plus `nodes` fschedd daemons; state, spool and checkpoints under `root`.
    `partitions`: PartitionName lines without their Nodes= (every node is in each), e.g.
    ["PartitionName=low Default=YES PriorityTier=1"]; default one partition, debug."""

    def __init__(self, build: Path, root: Path, nodes: int = 1, cpus: int = 2,
                 partitions: list[str] | None = None, **conf):
        self.build = build
        self.root = root
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        os.chmod(root, 0o755)
        self.ctld_port = free_port()
        self.rest_port = free_port()  # RestPort: the REST API and web console (JWT)
        self.node_ports = {f"node{i + 1}": free_port() for i in range(nodes)}
        self.conf_path = root / "fsched.conf"
        self.ckpt_dir = Path(conf.pop("CheckpointDir", root / "checkpoint"))
        settings = {
            "ClusterName": "e2e",
            "ControlMachine": "localhost",
            "ControlAddr": self.addr("ctld"),
            "ControlPort": self.ctld_port,
            "RestPort": self.rest_port,
            "AuthAltTypes": "auth/jwt",
            "WebRoot": build / "web",
            "StateSaveLocation": root / "state",
            "SlurmdSpoolDir": root / "spool",
            "CheckpointDir": self.ckpt_dir,
            "CheckpointType": "checkpoint/criu",
            "CRIU_MaxEpochs": 5,
            "CheckpointTimeout": 300,
            "KillWait": 5,
            "HeartbeatInterval": 2,
            "SlurmctldPidFile": root / "fschedctld.pid",
            "SlurmdPidFile": root / "fschedd.pid",
            "FschedCkptPath": build / "src/tools/fsched-ckpt",
        }
        settings.update(conf)
        self.settings = settings
        self.node_lines = [f"NodeName={name} NodeAddr={self.addr(name)} Port={port} CPUs={cpus} RealMemory=8000"
                           for name, port in self.node_ports.items()]
        self.partition_lines = [f"{p} Nodes={','.join(self.node_ports)}" for p in
                                partitions or ["PartitionName=debug Default=YES MaxTime=INFINITE State=UP"]]
        self.node_lines += self.partition_lines
        self.write_conf(self.conf_path)
        # Users run the commands from a copy: the build may sit where they cannot reach
        # (a checkout under /root).
        self.bin = root / "bin"
        self.bin.mkdir()
        os.chmod(self.bin, 0o755)
        for prog in ("sbatch", "squeue", "scontrol", "scancel", "sinfo"):
            shutil.copy2(build / "src/cmds" / prog, self.bin / prog)
        self.env = dict(os.environ, FSCHED_CONF=str(self.conf_path))
        self.ctld: subprocess.Popen | None = None
        self.nodes: dict[str, subprocess.Popen] = {}
        # Each fschedd in a cgroup of this cluster's own: fschedd makes its nodes' job
        # cgroups below its own cgroup (docs/fencing-node.md), and two clusters that
        # run at once on this host (both with a node1) must not share them.
        cg2 = cgroup2_mount()
        self.node_cgroups = cg2 / f"fsched-e2e-{os.getpid()}-{root.name}" if cg2 else None

    def addr(self, name: str) -> str:
        """The address of host `name` ("ctld" or a node): here every host is loopback."""
        return "127.0.0.1"

    def write_conf(self, path: Path, **overrides):
        """Writes fsched.conf to `path`: this cluster's settings, with `overrides` replacing
        (or adding) keys, and the node and partition lines."""
        lines = ["# generated by tests/e2e/sched_e2e.py"]
        lines += [f"{k} = {v}" for k, v in {**self.settings, **overrides}.items()]
        path.write_text("\n".join(lines + self.node_lines) + "\n")
        os.chmod(path, 0o644)

    # -------------------------------------------------------------- daemons
    def _daemon(self, argv: list[str], log: str, host: str) -> subprocess.Popen:
        """Starts a daemon of `host` ("ctld" or a node name); a subclass may run it
        elsewhere (tests/e2e/netcluster.py: in the host's namespace and cgroup)."""
        out = open(self.root / log, "ab")
        # cwd /, and the configuration through $FSCHED_CONF, so that the per-test cleanup,
        # which kills processes whose cwd or command line is in the run directory, leaves
        # the daemons alone.
        return subprocess.Popen(argv, cwd="/", env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def start_ctld(self):
        self.ctld = self._daemon([str(self.build / "src/ctld/fschedctld"), "-D"],
                                 "fschedctld.log", "ctld")
        self.wait_for(lambda: self.cmd("sinfo", check=False).returncode == 0, 20, "fschedctld to answer")

    def start_node(self, name: str):
        argv = [str(self.build / "src/noded/fschedd"), "-D", "-N", name]
        if self.node_cgroups:
            cg = self.node_cgroups / name
            cg.mkdir(parents=True, exist_ok=True)
            # The shell moves itself into the cgroup, then becomes fschedd (same pid).
            argv = ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cg), *argv]
        self.nodes[name] = self._daemon(argv, f"fschedd-{name}.log", name)

    def start(self) -> "Cluster":
        start_munge()
        self.start_ctld()
        for n in self.node_ports:
            self.start_node(n)
        self.wait_for(lambda: all(n["state"] in ("IDLE", "MIXED", "ALLOCATED") for n in self.node_list()),
                      30, "the nodes to register")
        return self

    def kill_ctld(self, sig=signal.SIGKILL):
        self.ctld.send_signal(sig)
        self.ctld.wait(30)

    def kill_node(self, name: str, sig=signal.SIGTERM):
        self.nodes[name].send_signal(sig)
        self.nodes[name].wait(30)

    def stop(self):
        for p in [self.ctld, *self.nodes.values()]:
            if p and p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if self.node_cgroups and self.node_cgroups.exists():
            # Empty cgroups only (rmdir): jobs left running keep theirs.
            for d in sorted(self.node_cgroups.rglob("*"), key=lambda p: -len(p.parts)):
                if d.is_dir():
                    try:
                        d.rmdir()
                    except OSError:
                        pass
            try:
                self.node_cgroups.rmdir()
            except OSError:
                pass

    def log(self, name="fschedctld.log") -> str:
        return (self.root / name).read_text(errors="replace")

    # -------------------------------------------------------------- commands
    def cmd(self, prog: str, *args, user: str | None = None, check=True, cwd=None, timeout=600,
            input: str | None = None) -> subprocess.CompletedProcess:
        argv = [str(self.bin / prog), *map(str, args)]
        if user:
            argv = ["runuser", "-u", user, "--", *argv]
        r = subprocess.run(self.command_argv(argv), env=self.env, cwd=cwd, capture_output=True, text=True,
                           timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"{prog} {' '.join(map(str, args))} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def command_argv(self, argv: list[str]) -> list[str]:
        """How a command runs (a subclass runs it on its login host)."""
        return argv

    @property
    def rest_url(self) -> str:
        """Where fschedctld serves the REST API and the web console (RestAddr:RestPort)."""
        return f"http://{self.addr('ctld')}:{self.rest_port}"

    def token(self, user: str | None = None, lifespan: int | None = None) -> str:
        """A JWT for the REST API from `scontrol token`, run as `user` (root if None)."""
        args = ["token"] + ([f"lifespan={lifespan}"] if lifespan is not None else [])
        out = self.cmd("scontrol", *args, user=user).stdout.strip()
        assert out.startswith("SLURM_JWT="), out
        return out.removeprefix("SLURM_JWT=")

    def sbatch(self, *args, user=None, cwd=None) -> int:
        r = self.cmd("sbatch", "--parsable", *args, user=user, cwd=cwd)
        return int(r.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict:
        r = self.cmd("squeue", "--json", "-j", job_id, "-t", "all")
        jobs = json.loads(r.stdout)["jobs"]
        assert len(jobs) == 1, r.stdout
        return jobs[0]

    def checkpoints(self, job_id: int) -> list[dict]:
        return json.loads(self.cmd("scontrol", "checkpoint", "list", job_id, "--json").stdout)["checkpoints"]

    def node_list(self) -> list[dict]:
        r = self.cmd("sinfo", "--json", check=False)
        if r.returncode != 0:
            return []
        return json.loads(r.stdout)["nodes"]

    # -------------------------------------------------------------- waiting
    @staticmethod
    def wait_for(pred, timeout: float, what: str, interval=0.2):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = pred()
            if v:
                return v
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def wait_state(self, job_id: int, states, timeout=300) -> dict:
        states = {states} if isinstance(states, str) else set(states)
        last = {}

        def done():
            nonlocal last
            last = self.job(job_id)
            return last if last["state"] in states else None
        try:
            return self.wait_for(done, timeout, f"job {job_id} to be {states}", interval=0.3)
        except AssertionError as e:
            raise AssertionError(f"{e}; last seen: {last.get('state')} ({last.get('reason')})\n"
                                 f"{self.log()[-3000:]}") from None

    def wait_checkpoints(self, job_id: int, n: int, timeout=120, status="Present") -> list[dict]:
        return self.wait_for(lambda: (c := self.checkpoints(job_id)) and
                             sum(x["status"] == status for x in c) >= n and c, timeout,
                             f"{n} {status} checkpoints of job {job_id}")
