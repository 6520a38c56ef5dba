"""A cluster of separate hosts on one machine, for the tests of node failures: the
controller and every node in a network namespace of its own, linked by veth pairs to
a Linux bridge in a "switch" namespace, and every host's daemons and jobs in a cgroup
v2 of their own. So "crash node1" is cgroup.kill of node1's cgroup (fschedd, its
helpers and all its jobs at once), "partition node1" takes the switch side of node1's
link down (everything keeps running but node1 reaches no one), as on real hosts.

What is shared, as a cluster shares it: the file system (checkpoint directory, users'
directories, the run directory), and munged's unix socket (a path socket is not
network-namespaced, so one munged on the machine serves every host).

Nothing of the machine's own network namespace is touched: no address, route or link
is added there. Every name carries the prefix fse2e-<pid>-<n>- (<pid> the Python process
that made it), and remove_stale() removes what dead processes left behind.

    with NetCluster(build, root, nodes=2, HeartbeatInterval=1) as c:
        job = c.sbatch("job.sh", user="fschedtest", cwd=workdir)
        c.partition("node1"); ...; c.heal("node1")

Run as root. Needs ip (iproute2) and nsenter (util-linux)."""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import ipaddress
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from sched_e2e import Cluster

PREFIX = "fse2e"
NETNS_DIR = Path("/run/netns")
CTLD_PORT, NODE_PORT = 6817, 6818  # Slurm's: every host has its own address, no clash
_serial = itertools.count(1)
_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000


def private_mount(source: Path, target: Path):
    """Gives the calling process a mount namespace of its own in which `source` is
    mounted on `target` (nothing else changes: the rest of the file system stays shared
    with the host, mount events no longer propagate either way)."""
    for call, args in (("unshare", (CLONE_NEWNS,)),
                       ("mount", (None, b"/", None, MS_REC | MS_PRIVATE, None)),
                       ("mount", (str(source).encode(), str(target).encode(), None,
                                  MS_BIND, None))):
        if getattr(_libc, call)(*args) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"{call}{args}: {os.strerror(e)}")


def setns_net(path: Path):
    """Moves the calling process into the network namespace bound at `path`
    (os.setns from Python 3.12 on)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if hasattr(os, "setns"):
            os.setns(fd, CLONE_NEWNET)
        elif _libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns {path}: {os.strerror(e)}")
    finally:
        os.close(fd)


# ------------------------------------------------------------------ plumbing
def ip(*args, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *map(str, args)], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(map(str, args))}: {r.stderr.strip()}")
    return r


def cgroup2_root() -> Path:
    """Where cgroup v2 is mounted: /sys/fs/cgroup on a pure-v2 system, often
    /sys/fs/cgroup/unified in hybrid mode."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        f = line.split()
        if len(f) > 2 and f[2] == "cgroup2":
            return Path(f[1])
    raise RuntimeError("no cgroup2 file system mounted (see /proc/self/mounts)")


def cgroup_procs(cg: Path) -> list[int]:
    """Every process in cgroup `cg` and its descendants."""
    pids = []
    for d, _, _ in os.walk(cg):
        try:
            pids += [int(p) for p in (Path(d) / "cgroup.procs").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass  # removed meanwhile
    return pids


def cgroup_populated(cg: Path) -> bool:
    try:
        return "populated 1" in (cg / "cgroup.events").read_text()
    except FileNotFoundError:
        return False


def kill_cgroup(cg: Path, timeout: float = 30):
    """SIGKILLs every process of `cg` and below (frozen ones too) and waits until none is
    left."""
    if not cg.is_dir():
        return
    (cg / "cgroup.kill").write_text("1")
    deadline = time.monotonic() + timeout
    while cgroup_populated(cg):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{cg} still holds processes {cgroup_procs(cg)} {timeout} s after cgroup.kill")
        time.sleep(0.02)


def remove_cgroup(cg: Path):
    """cgroup.kill, then rmdir of `cg` and its descendants, deepest first (the daemons
    may have made cgroups of their own below theirs)."""
    if not cg.is_dir():
        return
    kill_cgroup(cg)
    for d, _, _ in os.walk(cg, topdown=False):
        for attempt in range(100):
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:  # EBUSY for a moment while the last exits are accounted
                time.sleep(0.02)
        else:
            os.rmdir(d)


def host_links() -> set[str]:
    """The names of the links in the machine's own network namespace."""
    return {ln.split(":")[1].strip().split("@")[0] for ln in ip("-o", "link", "show").stdout.splitlines()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def remove_stale():
    """Removes the namespaces and cgroups of runs whose process is gone (a test session
    that was killed), as conftest._remove_stale_runs does for directories."""
    stale = re.compile(rf"^{PREFIX}-(\d+)-")
    cg2 = cgroup2_root()
    for cg in cg2.glob(f"{PREFIX}-*"):
        m = stale.match(cg.name)
        if m and not _pid_alive(int(m.group(1))):
            remove_cgroup(cg)
    if NETNS_DIR.is_dir():
        for ns in NETNS_DIR.iterdir():
            m = stale.match(ns.name)
            if m and not _pid_alive(int(m.group(1))):
                ip("netns", "del", ns.name, check=False)


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 10.197.0.0/16 that overlaps no route of the machine. The run's hosts
    never see the machine's routes, but an address that also means something outside
    would make logs ambiguous; different runs may use the same /24 (separate networks)."""
    routes = []
    for r in json.loads(ip("-j", "route", "show", "table", "all").stdout or "[]"):
        dst = r.get("dst", "")
        if dst in ("default", ""):
            continue
        with contextlib.suppress(ValueError):
            routes.append(ipaddress.ip_network(dst, strict=False))
    start = os.getpid() % 200 + 20
    for n in itertools.chain(range(start, 250), range(20, start)):
        net = ipaddress.ip_network(f"10.197.{n}.0/24")
        if not any(net.overlaps(r) for r in routes if r.version == 4):
            return net
    raise RuntimeError("no free /24 in 10.197.0.0/16")


# ------------------------------------------------------------------ the cluster
class NetCluster(Cluster):
    """Cluster (tests/e2e/sched_e2e.py) whose hosts are separate: "ctld" and node1..N
    each in a network namespace and a cgroup of their own. The commands (cmd, sbatch,
    ...) run in the controller's namespace."""

    def __init__(self, build: Path, root: Path, nodes: int = 2, cpus: int = 2, **conf):
        self.tag = f"{PREFIX}-{os.getpid()}-{next(_serial)}"
        self.hosts = ["ctld", *(f"node{i + 1}" for i in range(nodes))]
        self.subnet = free_subnet()
        hosts_ip = self.subnet.hosts()
        self.ips = {h: str(next(hosts_ip)) for h in self.hosts}
        self.cg = cgroup2_root() / self.tag
        self._up = False
        self.saturators: dict[str, list[subprocess.Popen]] = {}
        super().__init__(build, root, nodes=nodes, cpus=cpus, **conf)
        # Each host has its cgroup below self.cg already (crash = kill it): fschedd makes
        # its jobs cgroup below that one.
        self.node_cgroups = None
        # Every host has its own address: the ports Slurm uses, the same on every node.
        self.ctld_port = CTLD_PORT
        self.node_ports = dict.fromkeys(self.node_ports, NODE_PORT)
        self.settings["ControlPort"] = CTLD_PORT
        self.node_lines = [f"NodeName={n} NodeAddr={self.addr(n)} Port={NODE_PORT} CPUs={cpus} RealMemory=8000"
                           for n in self.node_ports] + self.partition_lines
        self.write_conf(self.conf_path)
        self.spool = root / "spool"  # empty on the host: each node mounts its own there
        self.spool.mkdir(exist_ok=True)
        # Each node its own fsched.conf, as each host has its /etc/fsched: the same but
        # for the files a node keeps locally (its spool).
        self.host_env = {"ctld": self.env}
        for n in self.node_ports:
            d = root / "hosts" / n
            d.mkdir(parents=True)
            os.chmod(d.parent, 0o755)
            (d / "spool").mkdir()
            # A spool directory of its own at the same path on every node, as nodes have
            # their local disks: a restored job's init writes its status where it was
            # told at launch, on whichever node it now runs (see _spawn).
            self.write_conf(d / "fsched.conf", SlurmdSpoolDir=self.spool, SlurmdPidFile=d / "fschedd.pid")
            self.host_env[n] = dict(self.env, FSCHED_CONF=str(d / "fsched.conf"))

    # -------------------------------------------------------------- names
    def addr(self, name: str) -> str:
        """The IP of "ctld" or a node."""
        return self.ips[name]

    def netns(self, host: str) -> str:
        """The name of `host`'s network namespace (`ip netns` / /run/netns)."""
        return f"{self.tag}-{host}"

    def cgroup(self, host: str) -> Path:
        return self.cg / host

    def _check_node(self, name: str):
        if name not in self.node_ports:
            raise KeyError(f"no node {name!r} (nodes: {', '.join(self.node_ports)})")

    # -------------------------------------------------------------- set up, tear down
    def _network(self):
        sw = self.netns("switch")
        ip("netns", "add", sw)
        ip("-n", sw, "link", "set", "lo", "up")
        # No STP, no forwarding delay: a healed port forwards at once.
        ip("-n", sw, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
        ip("-n", sw, "link", "set", "br0", "up")
        for h in self.hosts:
            ns = self.netns(h)
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
            # Both ends made in their namespaces directly: the machine's own namespace
            # never holds them, not even for a moment.
            ip("-n", sw, "link", "add", f"v-{h}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("-n", sw, "link", "set", f"v-{h}", "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{self.ips[h]}/{self.subnet.prefixlen}", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")

    def start(self) -> "NetCluster":
        remove_stale()
        self._links_before = host_links()
        self._up = True
        atexit.register(self.stop)
        try:
            self.cg.mkdir()
            for h in self.hosts:
                self.cgroup(h).mkdir()
            self._network()
            return super().start()
        except BaseException:
            self.stop()
            raise

    def stop(self):
        """Kills every process of every host (daemons, jobs, saturators), removes the
        namespaces (their links go with them) and the cgroups. Idempotent."""
        if not self._up:
            return
        self._up = False
        atexit.unregister(self.stop)
        errors = []
        try:
            remove_cgroup(self.cg)  # everything of the run lives below it
        except (OSError, RuntimeError) as e:
            errors.append(str(e))
        for p in [self.ctld, *self.nodes.values(), *itertools.chain(*self.saturators.values())]:
            try:
                if p:
                    p.wait(10)  # reap
            except subprocess.TimeoutExpired:
                errors.append(f"pid {p.pid} ({p.args[0]}) still running")
        self.saturators.clear()
        # The namespaces go even if a process could not be killed: the names at least
        # do not linger (remove_stale() takes the cgroups of a dead run later).
        for h in [*self.hosts, "switch"]:
            if (NETNS_DIR / self.netns(h)).exists():
                r = ip("netns", "del", self.netns(h), check=False)
                if r.returncode:
                    errors.append(r.stderr.strip())
        if errors:
            raise RuntimeError(f"NetCluster {self.tag}: stop left something behind: {'; '.join(errors)}")

    def __enter__(self) -> "NetCluster":
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -------------------------------------------------------------- processes
    def _enter(self, host: str) -> list[str]:
        return ["nsenter", f"--net={NETNS_DIR / self.netns(host)}", "--"]

    def _spawn(self, host: str, argv: list[str], **kw) -> subprocess.Popen:
        """Starts argv in `host`'s namespace and cgroup. The child joins both between
        fork and exec, so the program never runs outside them, and once Popen returns
        (after the exec) its pid is in them."""
        procs = self.cgroup(host) / "cgroup.procs"
        netns = NETNS_DIR / self.netns(host)

        spool = self.root / "hosts" / host / "spool"

        def enter():
            with open(procs, "w") as f:
                f.write("0")  # 0: the writing process
            setns_net(netns)
            if host != "ctld":
                private_mount(spool, self.spool)
        return subprocess.Popen(argv, preexec_fn=enter, **kw)

    def _daemon(self, argv: list[str], log: str, host: str) -> subprocess.Popen:
        out = open(self.root / log, "ab")
        # cwd / as in Cluster: the per-test cleanup kills processes whose cwd is in the
        # run directory.
        with out:
            return self._spawn(host, argv, cwd="/", env=self.host_env[host], stdout=out,
                               stderr=subprocess.STDOUT)

    def command_argv(self, argv: list[str]) -> list[str]:
        return self._enter("ctld") + argv

    def start_node(self, name: str):
        """(Re)starts fschedd in its namespace and cgroup (returns at once; it registers
        on its own)."""
        self._check_node(name)
        self.cgroup(name).mkdir(exist_ok=True)
        super().start_node(name)

    def start_ctld(self):
        self.cgroup("ctld").mkdir(exist_ok=True)
        super().start_ctld()

    def kill_ctld(self, sig=signal.SIGKILL):
        """Signals fschedctld (SIGKILL: a crash of the controller) and waits for its end."""
        super().kill_ctld(sig)

    def crash_node(self, name: str):
        """The node dies: cgroup.kill of its cgroup, so fschedd, its helpers and all its
        jobs get SIGKILL at once. Returns once the cgroup is empty."""
        self._check_node(name)
        kill_cgroup(self.cgroup(name))
        if name in self.nodes:
            self.nodes[name].wait()
        for p in self.saturators.pop(name, []):
            p.wait()

    def node_pids(self, name: str) -> list[int]:
        """Every process in the node's cgroup and below (fschedd, its helpers, jobs...)."""
        self._check_node(name)
        return cgroup_procs(self.cgroup(name))

    def partition(self, name: str):
        """Cuts the host's link at the switch: its processes keep running, it reaches no
        one and no one reaches it."""
        ip("-n", self.netns("switch"), "link", "set", f"v-{name}", "down")

    def heal(self, name: str):
        ip("-n", self.netns("switch"), "link", "set", f"v-{name}", "up")

    def stop_daemon(self, name: str, sig=signal.SIGSTOP):
        """Signals the node's fschedd process only (not its helpers or jobs)."""
        self._check_node(name)
        self.nodes[name].send_signal(sig)

    def cont_daemon(self, name: str):
        self.stop_daemon(name, signal.SIGCONT)

    @contextlib.contextmanager
    def saturate(self, name: str, cpus: int | None = None):
        """Makes the node's host busy: one CPU burner per CPU of the machine (`cpus` to
        choose) plus a writer that fsyncs every MiB it writes, all in the node's namespace
        and cgroup (crash_node kills them too); stopped at exit."""
        self._check_node(name)
        burn = "while True: pass"
        data = self.root / "hosts" / name / "saturate.dat"
        # Rewrites the same 256 MiB over and over: the disk stays busy, the file system
        # does not fill up.
        write = (f"import os\nfd = os.open({str(data)!r}, os.O_WRONLY | os.O_CREAT, 0o600)\n"
                 "buf = os.urandom(1 << 20)\ni = 0\n"
                 "while True:\n"
                 "    os.pwrite(fd, buf, (i % 256) << 20); os.fsync(fd); i += 1\n")
        procs = [self._spawn(name, [sys.executable, "-c", burn], cwd="/")
                 for _ in range(cpus or os.cpu_count())]
        procs.append(self._spawn(name, [sys.executable, "-c", write], cwd="/"))
        self.saturators.setdefault(name, []).extend(procs)
        try:
            yield procs
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
                with contextlib.suppress(ValueError):
                    self.saturators.get(name, []).remove(p)
            data.unlink(missing_ok=True)

    # -------------------------------------------------------------- looking
    def netns_link(self, host: str) -> str:
        """The link /proc/self/ns/net has in `host` ("net:[INODE]"): what a process there
        reads (nodefail.py's trace.log records it per step)."""
        return self.host_run(host, ["readlink", "/proc/self/ns/net"]).stdout.strip()

    def host_run(self, host: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
        """Runs a short command in `host`'s network namespace (not its cgroup)."""
        return subprocess.run(self._enter(host) + argv, capture_output=True, text=True, timeout=60, **kw)

    def leftovers(self) -> list[str]:
        """What of this run is still on the machine: its namespaces, links in the machine's
        namespace that were not there before start(), its cgroups, processes whose command
        line or environment names the run (its directory or tag). [] after stop()."""
        left = [f"netns {ns.name}" for ns in NETNS_DIR.glob(f"{self.tag}-*")] if NETNS_DIR.is_dir() else []
        left += [f"link {n}" for n in sorted(host_links() - getattr(self, "_links_before", set()))]
        if self.cg.exists():
            left.append(f"cgroup {self.cg} holding {cgroup_procs(self.cg)}")
        marks = (str(self.root).encode(), self.tag.encode())
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) == os.getpid():
                continue
            try:
                proc = Path("/proc", pid)
                seen = proc.joinpath("cmdline").read_bytes() + b"\0" + proc.joinpath("environ").read_bytes()
            except OSError:
                continue
            if any(m in seen for m in marks):
                cmdline = proc.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                left.append(f"process {pid}: {cmdline.strip()}")
        return left


# ------------------------------------------------------------------ manual use
# scripts/netcluster.sh up|down|exec|crash|partition|heal|status: a NetCluster kept by a
# background "holder" process until `down`; the other commands act on it through what
# it wrote to DIR/netcluster.json (names are derived, the operations are stateless).
def _state(d: Path) -> dict:
    try:
        return json.loads((d / "netcluster.json").read_text())
    except FileNotFoundError:
        raise SystemExit(f"no cluster up in {d} (scripts/netcluster.sh up first)") from None


def _serve(args):
    """The holder: starts the cluster, records it, waits for SIGTERM/SIGINT, stops it."""
    conf = dict(kv.split("=", 1) for kv in args.conf)
    c = NetCluster(Path(args.build).resolve(), Path(args.dir).resolve(), nodes=args.nodes, cpus=args.cpus, **conf)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    with c:
        state = {"pid": os.getpid(), "tag": c.tag, "cgroup": str(c.cg), "conf": str(c.conf_path),
                 "bin": str(c.bin), "build": str(c.build), "addrs": c.ips,
                 "netns": {h: c.netns(h) for h in [*c.hosts, "switch"]},
                 "host_conf": {h: e["FSCHED_CONF"] for h, e in c.host_env.items()}}
        (c.root / "netcluster.json").write_text(json.dumps(state, indent=1))
        while not stop:
            time.sleep(0.2)
    (c.root / "netcluster.json").unlink(missing_ok=True)


def main(argv=None):
    import argparse
    repo = Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(prog="netcluster.sh", description="A multi-host fsched cluster on this machine "
                                 "(network namespaces + cgroups, tests/e2e/netcluster.py), for manual experiments.")
    ap.add_argument("--dir", default="/var/tmp/fsched-netcluster", help="run directory (wiped by up)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start controller and nodes in the background")
    for p in (up, sub.add_parser("serve", help=argparse.SUPPRESS)):
        p.add_argument("--build", default=os.environ.get("FSCHED_BUILD", str(repo / "build")))
        p.add_argument("--nodes", type=int, default=2)
        p.add_argument("--cpus", type=int, default=2)
        p.add_argument("conf", nargs="*", metavar="KEY=VALUE", help="fsched.conf settings")
    sub.add_parser("down", help="stop everything and remove namespaces and cgroups")
    sub.add_parser("status", help="hosts, addresses and sinfo")
    ex = sub.add_parser("exec", help="run a command on a host (default ctld), e.g. exec squeue; exec -H node1 ip a")
    ex.add_argument("-H", "--host", default="ctld")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    for name in ("crash", "partition", "heal"):
        sub.add_parser(name, help=f"{name} a node").add_argument("node")
    args = ap.parse_args(argv)
    d = Path(args.dir).resolve()

    if args.cmd == "serve":
        return _serve(args)
    if args.cmd == "up":
        if (d / "netcluster.json").exists() and _pid_alive(_state(d)["pid"]):
            raise SystemExit(f"a cluster is already up in {d} (netcluster.sh down first)")
        log = Path(f"{d}.holder.log")
        with open(log, "wb") as out:
            holder = subprocess.Popen([sys.executable, __file__, "--dir", str(d), "serve", "--build", args.build,
                                       "--nodes", str(args.nodes), "--cpus", str(args.cpus), *args.conf],
                                      stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True, cwd="/")
        deadline = time.monotonic() + 60
        while not (d / "netcluster.json").exists():
            if holder.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the cluster did not start; see {log}:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        args.cmd = "status"
    st = _state(d)
    if args.cmd == "down":
        os.kill(st["pid"], signal.SIGTERM)
        while _pid_alive(st["pid"]):
            time.sleep(0.2)
        print(f"down: {st['tag']}")
    elif args.cmd == "status":
        print(f"holder pid {st['pid']}, names {st['tag']}-*, cgroups {st['cgroup']}")
        for h, a in st["addrs"].items():
            print(f"  {h:8} {a:15} netns {st['netns'][h]}")
        print(f"commands: {Path(__file__).parents[2] / 'scripts/netcluster.sh'} --dir {d} exec sinfo "
              f"(or nsenter --net=/run/netns/{st['netns']['ctld']} env FSCHED_CONF={st['conf']} {st['bin']}/sinfo)")
        subprocess.run(["nsenter", f"--net=/run/netns/{st['netns']['ctld']}", "--", f"{st['bin']}/sinfo"],
                       env=dict(os.environ, FSCHED_CONF=st["conf"]))
    elif args.cmd == "exec":
        argv = args.command or ["bash"]
        if (Path(st["bin"]) / argv[0]).exists():
            argv[0] = str(Path(st["bin"]) / argv[0])
        os.execvpe("nsenter", ["nsenter", f"--net=/run/netns/{st['netns'][args.host]}", "--", *argv],
                   dict(os.environ, FSCHED_CONF=st["host_conf"][args.host]))
    elif args.cmd == "crash":
        kill_cgroup(Path(st["cgroup"]) / args.node)
    elif args.cmd in ("partition", "heal"):
        ip("-n", st["netns"]["switch"], "link", "set", f"v-{args.node}", "down" if args.cmd == "partition" else "up")


if __name__ == "__main__":
    main()
