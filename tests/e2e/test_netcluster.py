"""The multi-host test cluster itself (tests/e2e/netcluster.py): the controller and the
nodes as separate hosts (a network namespace and a cgroup each), real daemons, jobs as
the unprivileged test user. What the node-failure tests rely on is proven here: the
hosts talk over their own addresses, a crash kills a node's daemon and jobs together,
a partition cuts only the network, a stopped fschedd stops only itself, and nothing is
left behind. HeartbeatInterval=1 and a large SlurmdTimeout: no failure handling is
tested here, only the harness."""
from __future__ import annotations

import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ckpt_e2e import E2E
from netcluster import NETNS_DIR, PREFIX, NetCluster, cgroup2_root, remove_stale

CONF = {"HeartbeatInterval": 1, "SlurmdTimeout": 300}

# Writes a numbered line every DELAY seconds; the first line says from which address the
# job reaches the controller (a UDP connect sends nothing, it only picks the route).
LINES_SH = """#!/bin/bash
python3 -c 'import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((sys.argv[1], 9))
print("src", s.getsockname()[0], flush=True)' "$1"
for i in $(seq 1 "$2"); do echo "line $i"; sleep "$3"; done
echo done
"""


def workdir(e2e: E2E, name: str, user: str) -> Path:
    d = e2e.jobs_dir.parent / "netcluster" / name
    d.mkdir(parents=True)
    os.chmod(d.parent, 0o755)
    (d / "lines.sh").write_text(LINES_SH)
    pw = pwd.getpwnam(user)
    for p in (d, d / "lines.sh"):
        os.chown(p, pw.pw_uid, pw.pw_gid)
    return d


def lines(d: Path, jid: int) -> list[str]:
    try:
        return (d / f"slurm-{jid}.out").read_text().splitlines()
    except FileNotFoundError:
        return []


def job_pids(c: NetCluster, node: str, d: Path) -> list[int]:
    """The job's lasting processes: those of the node's cgroup working in the job's
    directory, but not the short-lived sleeps between its lines."""
    out = []
    for p in c.node_pids(node):
        try:
            if os.readlink(f"/proc/{p}/cwd") == str(d) and Path(f"/proc/{p}/comm").read_text().strip() != "sleep":
                out.append(p)
        except OSError:
            pass
    return out


def alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def heartbeat(c: NetCluster, node: str) -> float:
    return next(n["last_heartbeat"] for n in c.node_list() if n["name"] == node)


def can_connect(c: NetCluster, from_host: str | None, addr: str, port: int, timeout=1.5) -> bool:
    """A TCP connect from `from_host`'s namespace (None: the machine's own)."""
    prog = ("import socket, sys\n"
            "try: socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))\n"
            "except OSError: sys.exit(1)\n")
    argv = ["/usr/bin/python3", "-c", prog, addr, str(port), str(timeout)]
    r = c.host_run(from_host, argv) if from_host else subprocess.run(argv, capture_output=True, timeout=30)
    return r.returncode == 0


def start_job(c: NetCluster, e2e: E2E, name: str, user: str, n=600, delay=0.2) -> tuple[int, str, Path]:
    d = workdir(e2e, name, user)
    jid = c.sbatch("lines.sh", c.addr("ctld"), n, delay, user=user, cwd=d)
    node = c.wait_state(jid, "RUNNING", timeout=60)["nodes"]
    c.wait_for(lambda: len(lines(d, jid)) >= 3, 30, f"job {jid} to write")
    return jid, node, d


def end_job(c: NetCluster, jid: int):
    c.cmd("scancel", jid, check=False)
    c.wait_state(jid, {"CANCELLED", "COMPLETED", "FAILED", "NODE_FAIL"}, timeout=60)


@pytest.fixture(scope="module")
def net(e2e: E2E, build_dir):
    t0 = time.monotonic()
    with NetCluster(build_dir, e2e.jobs_dir.parent / "netcluster-hosts", nodes=2, **CONF) as c:
        print(f"NetCluster start: {time.monotonic() - t0:.2f} s")
        yield c


def test_nodes_register_over_their_own_addresses_and_run_a_job(net: NetCluster, e2e: E2E, test_user):
    nodes = {n["name"]: n for n in net.node_list()}
    assert set(nodes) == {"node1", "node2"}
    addrs = {net.addr(h) for h in ("ctld", "node1", "node2")}
    assert len(addrs) == 3 and all(a.startswith("10.197.") for a in addrs), addrs
    for name, n in nodes.items():
        assert n["addr"] == net.addr(name) and n["state"] == "IDLE", n
        log = net.log(f"fschedd-{name}.log")
        assert f"registered with the controller at {net.addr('ctld')}:{net.ctld_port}" in log, log
        # fschedd lives in its host's namespace and cgroup.
        pid = net.nodes[name].pid
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(NETNS_DIR / net.netns(name)).st_ino
        assert pid in net.node_pids(name)
    assert net.ctld.pid not in net.node_pids("node1") + net.node_pids("node2")
    assert os.stat(f"/proc/{net.ctld.pid}/ns/net").st_ino == os.stat(NETNS_DIR / net.netns("ctld")).st_ino
    # The hosts reach one another over the bridge; the machine's own namespace was not
    # touched: no address or route of the run's subnet there. (Whether a connect from
    # it fails says nothing: a VM's network may answer any TCP connect by a proxy.)
    assert can_connect(net, "ctld", net.addr("node1"), net.node_ports["node1"])
    assert can_connect(net, "node2", net.addr("ctld"), net.ctld_port)
    own = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout + \
        subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True, check=True).stdout
    assert str(net.subnet.network_address)[:-1] not in own, own

    d = workdir(e2e, "simple", test_user)
    jid = net.sbatch("lines.sh", net.addr("ctld"), 5, 0.1, user=test_user, cwd=d)
    job = net.wait_state(jid, "COMPLETED", timeout=60)
    assert job["nodes"] in nodes and job["user"] == test_user
    # The job ran on its node's address, as the user, and wrote what it should.
    assert lines(d, jid) == [f"src {net.addr(job['nodes'])}", *(f"line {i}" for i in range(1, 6)), "done"]
    assert (d / f"slurm-{jid}.out").stat().st_uid == pwd.getpwnam(test_user).pw_uid


def test_crash_kills_daemon_and_jobs_together_and_node_comes_back(net: NetCluster, e2e: E2E, test_user):
    jid, node, d = start_job(net, e2e, "crash", test_user)
    jp = job_pids(net, node, d)
    daemon = net.nodes[node].pid
    assert jp and daemon in net.node_pids(node)
    registered = net.log(f"fschedd-{node}.log").count("registered with the controller")

    t0 = time.monotonic()
    net.crash_node(node)
    print(f"crash_node: {time.monotonic() - t0:.3f} s")
    assert net.node_pids(node) == []
    assert not any(alive(p) for p in [daemon, *jp]), "fschedd and the job die together"
    written = len(lines(d, jid))
    time.sleep(1)
    assert len(lines(d, jid)) == written, "the job wrote after the crash"

    t0 = time.monotonic()
    net.start_node(node)
    net.wait_for(lambda: net.log(f"fschedd-{node}.log").count("registered with the controller") > registered,
                 30, f"{node} to register again")
    since = time.time()
    net.wait_for(lambda: heartbeat(net, node) >= since, 10, f"a heartbeat of {node} after its restart")
    print(f"node back after restart: {time.monotonic() - t0:.2f} s")
    assert net.nodes[node].pid in net.node_pids(node)
    end_job(net, jid)


def test_partition_cuts_the_network_only(net: NetCluster, e2e: E2E, test_user):
    jid, node, d = start_job(net, e2e, "partition", test_user)
    other = next(n for n in net.node_ports if n != node)
    log = f"fschedd-{node}.log"
    before = len(net.log(log))
    # fschedd, its helpers and the job, but not the job's short-lived sleeps.
    pids = [p for p in net.node_pids(node) if Path(f"/proc/{p}/comm").read_text().strip() != "sleep"]

    t0 = time.monotonic()
    net.partition(node)
    try:
        assert not can_connect(net, "ctld", net.addr(node), net.node_ports[node])
        assert can_connect(net, "ctld", net.addr(other), net.node_ports[other])
        net.wait_for(lambda: "heartbeat to the controller failed" in net.log(log)[before:], 30,
                     f"{node} to log a failed heartbeat")
        print(f"partition: first failed heartbeat logged after {time.monotonic() - t0:.2f} s")
        hb, hb_other, written = heartbeat(net, node), heartbeat(net, other), len(lines(d, jid))
        time.sleep(3)
        assert heartbeat(net, node) == hb, "the controller heard from a partitioned node"
        assert heartbeat(net, other) > hb_other, "the other node's heartbeats go on"
        # Cut off, not dead: the daemon and the job keep running.
        assert len(lines(d, jid)) > written
        assert set(pids) <= set(net.node_pids(node)) and all(alive(p) for p in pids)
    finally:
        net.heal(node)
    t0 = time.monotonic()
    net.wait_for(lambda: heartbeat(net, node) > hb, 30, f"{node}'s heartbeats to resume after heal")
    print(f"heal: heartbeat again after {time.monotonic() - t0:.2f} s")
    assert can_connect(net, "ctld", net.addr(node), net.node_ports[node])
    end_job(net, jid)


def test_partition_of_the_controller_cuts_it_from_every_node(net: NetCluster):
    logs = {n: len(net.log(f"fschedd-{n}.log")) for n in net.node_ports}
    net.partition("ctld")
    try:
        net.wait_for(lambda: all("heartbeat to the controller failed" in net.log(f"fschedd-{n}.log")[at:]
                                 for n, at in logs.items()), 30, "every node to lose the controller")
        assert net.cmd("sinfo").returncode == 0, "the commands run on the controller's host: they still reach it"
    finally:
        net.heal("ctld")
    since = time.time()
    net.wait_for(lambda: all(n["last_heartbeat"] >= since for n in net.node_list()), 30,
                 "every node's heartbeats after heal")


def test_stop_daemon_stops_fschedd_only(net: NetCluster, e2e: E2E, test_user):
    jid, node, d = start_job(net, e2e, "sigstop", test_user)
    daemon = net.nodes[node].pid
    jp = job_pids(net, node, d)
    net.stop_daemon(node)
    try:
        net.wait_for(lambda: proc_state(daemon) == "T", 5, "fschedd to stop")
        time.sleep(0.5)  # a heartbeat already under way
        hb, written = heartbeat(net, node), len(lines(d, jid))
        time.sleep(3)
        assert heartbeat(net, node) == hb, "a stopped fschedd sent heartbeats"
        assert len(lines(d, jid)) >= written + 5, "the job must keep writing while fschedd is stopped"
        assert all(alive(p) and proc_state(p) != "T" for p in jp)
    finally:
        net.cont_daemon(node)
    net.wait_for(lambda: heartbeat(net, node) > hb, 15, f"{node}'s heartbeats after SIGCONT")
    assert proc_state(daemon) != "T"
    end_job(net, jid)


def cpu_seconds(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_saturate_loads_the_node_in_its_cgroup(net: NetCluster):
    node = "node2"
    data = net.root / "hosts" / node / "saturate.dat"
    with net.saturate(node) as procs:
        *burners, writer = procs
        assert len(burners) == os.cpu_count()
        assert {p.pid for p in procs} <= set(net.node_pids(node))
        assert os.stat(f"/proc/{writer.pid}/ns/net").st_ino == os.stat(NETNS_DIR / net.netns(node)).st_ino
        cpu0 = sum(cpu_seconds(p.pid) for p in burners)
        time.sleep(2)
        assert all(p.poll() is None for p in procs), "a saturator died"
        # They burn (the two cores are shared with whatever else runs: a loose bound).
        assert sum(cpu_seconds(p.pid) for p in burners) - cpu0 > 0.5
        assert data.stat().st_size >= 1 << 20
        io = dict(ln.split(": ") for ln in Path(f"/proc/{writer.pid}/io").read_text().splitlines())
        assert int(io["write_bytes"]) >= 1 << 20, io  # reached the disk (fsync), not only the cache
    assert all(p.returncode is not None for p in procs)
    assert not {p.pid for p in procs} & set(net.node_pids(node))
    assert not data.exists()


def test_controller_restart_in_its_namespace(net: NetCluster):
    old = net.ctld.pid
    net.kill_ctld()
    assert net.ctld.returncode == -signal.SIGKILL
    assert net.cmd("sinfo", check=False).returncode != 0
    t0 = time.monotonic()
    net.start_ctld()
    assert net.ctld.pid != old and net.ctld.pid in cgroup_procs_of(net, "ctld")
    assert os.stat(f"/proc/{net.ctld.pid}/ns/net").st_ino == os.stat(NETNS_DIR / net.netns("ctld")).st_ino
    since = time.time()
    net.wait_for(lambda: all(n["last_heartbeat"] >= since for n in net.node_list()), 15,
                 "both nodes to heartbeat the restarted controller")
    print(f"controller restart: nodes heard again after {time.monotonic() - t0:.2f} s")


def cgroup_procs_of(c: NetCluster, host: str) -> list[int]:
    return [int(p) for p in (c.cgroup(host) / "cgroup.procs").read_text().split()]


def test_nothing_left_behind(e2e: E2E, build_dir, test_user):
    c = NetCluster(build_dir, e2e.jobs_dir.parent / "netcluster-leftovers", nodes=2, **CONF)
    try:
        c.start()
        jid, node, d = start_job(c, e2e, "leftovers", test_user)
        jp = job_pids(c, node, d)
        # The worst moment to stop: a job running, a node cut off, a daemon stopped, a
        # node saturated, a sub-cgroup of a daemon's own (as fschedd makes per job).
        other = next(n for n in c.node_ports if n != node)
        c.partition(other)
        c.stop_daemon(node)
        sub = c.cgroup(node) / "jobs" / "extra"
        sub.mkdir(parents=True)
        sleeper = c._spawn(node, ["sleep", "600"])
        (sub / "cgroup.procs").write_text(str(sleeper.pid))
        (sub / "cgroup.freeze").write_text("1")  # as a fenced node's jobs are
        with c.saturate(other) as burners:
            assert {p.pid for p in burners} <= set(c.node_pids(other))
            assert os.stat(f"/proc/{burners[0].pid}/ns/net").st_ino == os.stat(NETNS_DIR / c.netns(other)).st_ino
            left = c.leftovers()
            for what in ("netns", "cgroup", "process"):
                assert any(x.startswith(what) for x in left), f"leftovers() must see the {what}s: {left}"
            c.stop()
        sleeper.wait(5)
        assert c.leftovers() == []
        assert jp and not any(alive(p) for p in jp)
        c.stop()  # idempotent
    finally:
        c.stop()
    assert c.leftovers() == []
    assert not c.cg.exists()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert c.tag not in listed
    assert not any(p.name.startswith(c.tag) for p in NETNS_DIR.iterdir())


def test_start_up_sweep_removes_what_dead_runs_left(e2e: E2E):
    dead = subprocess.Popen(["true"])
    dead.wait()
    tag = f"{PREFIX}-{dead.pid}-1"
    cg = cgroup2_root() / tag / "node1" / "jobs"
    cg.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "600"])
    (cg / "cgroup.procs").write_text(str(sleeper.pid))
    subprocess.run(["ip", "netns", "add", f"{tag}-node1"], check=True)
    mine = f"{PREFIX}-{os.getpid()}-999-switch"  # a live run's: kept
    subprocess.run(["ip", "netns", "add", mine], check=True)
    try:
        remove_stale()
        assert sleeper.wait(10) == -signal.SIGKILL
        assert not (cgroup2_root() / tag).exists()
        assert not (NETNS_DIR / f"{tag}-node1").exists()
        assert (NETNS_DIR / mine).exists()
    finally:
        subprocess.run(["ip", "netns", "del", mine], check=False)
        subprocess.run(["ip", "netns", "del", f"{tag}-node1"], check=False, capture_output=True)
        if sleeper.poll() is None:
            sleeper.kill()
