"""Incremental checkpoints through the scheduler (issue 14, docs/incremental.md): with
CRIU_Incremental = YES and CRIU_FullEvery = 3, an unprivileged user's job gets a full
checkpoint and two incrementals on it, then a full one again; CRIU_MaxEpochs = 2 keeps
the newest two and every image their chains need, and nothing else on disk; deleting a
parent that a kept checkpoint needs is refused; vacate and restart from the newest (a
three-link chain) and, after a full checkpoint of the restored run, from that older
incremental again. The job's output equals an uninterrupted run's, byte for byte."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from ckpt_e2e import E2E
from sched_e2e import Cluster
from test_sched import DELAY, STEPS, assert_same_as_reference, progress, run_reference, workdir


@pytest.fixture(scope="module")
def reference(e2e: E2E, test_user) -> dict[str, bytes]:
    return run_reference(e2e, test_user, "reference-incremental")


def checkpoint_after(c: Cluster, d: Path, jid: int, user: str, steps: int, action: str = "create"):
    """Waits until the job in `d` has made `steps` more steps, then `scontrol checkpoint
    ACTION` as `user`."""
    at = progress(d, jid)
    c.wait_for(lambda: progress(d, jid) >= at + steps, 60, "progress")
    c.cmd("scontrol", "checkpoint", action, jid, user=user)


def on_disk(c: Cluster, jid: int) -> set[int]:
    """The checkpoint ids whose image directory exists (no DIR.tmp left either)."""
    d = c.ckpt_dir / str(jid)
    names = [p.name for p in d.iterdir()] if d.is_dir() else []
    assert not [n for n in names if n.endswith(".tmp")], names
    return {int(n) for n in names}


def check_retention(c: Cluster, jid: int, present: set[int]):
    """Exactly `present` are Present, and exactly their images are on disk (the Cleared
    ones are removed by a worker of the controller)."""
    cks = c.checkpoints(jid)
    assert {x["checkpoint_id"] for x in cks if x["status"] == "Present"} == present, cks
    assert all(x["status"] in ("Present", "Cleared") for x in cks), cks
    c.wait_for(lambda: on_disk(c, jid) == present, 20,
               f"images on disk to be those of checkpoints {sorted(present)}: {sorted(on_disk(c, jid))}")


def test_incremental_chain_retention_and_restarts(e2e: E2E, build_dir: Path, test_user, reference):
    c = Cluster(build_dir, e2e.jobs_dir.parent / "cluster-incremental", CRIU_Incremental="YES",
                CRIU_FullEvery=3, CRIU_MaxEpochs=2).start()
    try:
        d = workdir(e2e, "incremental", test_user)
        jid = c.sbatch("job.sh", STEPS, DELAY, user=test_user, cwd=d)
        c.wait_state(jid, "RUNNING")
        c.wait_for(lambda: progress(d, jid) >= 3, 60, "progress")
        for n in range(1, 9):
            checkpoint_after(c, d, jid, test_user, 2)
            x = c.checkpoints(jid)[-1]
            assert x["checkpoint_id"] == n and x["status"] == "Present", x
            # FullEvery = 3: full, incremental, incremental, full, ...
            if n % 3 == 1:
                assert x["kind"] == "full" and x["parent_id"] == 0, x
                assert x["chain_size"] == x["size"], x
            else:
                assert x["kind"] == "incremental" and x["parent_id"] == n - 1, x
                below = [y for y in c.checkpoints(jid) if y["checkpoint_id"] == n - 1][0]
                assert x["chain_size"] == x["size"] + below["chain_size"], (x, below)
                assert x["size"] < below["chain_size"], "an incremental stores less than its chain"
            if n == 6:
                # The newest two are 5 and 6, incrementals on 4: 4 is kept for them.
                check_retention(c, jid, {4, 5, 6})
                r = c.cmd("scontrol", "checkpoint", "delete", jid, "CheckpointId=5", user=test_user, check=False)
                assert r.returncode != 0 and "parent image of incremental checkpoint(s) 6" in r.stderr, r.stderr
                r = c.cmd("scontrol", "checkpoint", "delete", jid, "CheckpointId=4", user=test_user, check=False)
                assert r.returncode != 0 and "checkpoint(s) 5, 6" in r.stderr, r.stderr
        check_retention(c, jid, {7, 8})
        table = c.cmd("scontrol", "checkpoint", "list", jid, user=test_user).stdout
        assert "KIND" in table.splitlines()[0] and "CHAIN_SIZE" in table.splitlines()[0], table
        assert re.search(r"\bincremental\s+7\s+\d+ms\s", table.splitlines()[-1]), table

        # Vacate: incremental on 8 (a three-link chain), then restart from it.
        c.cmd("scontrol", "checkpoint", "vacate", jid, user=test_user)
        c.wait_state(jid, "PENDING", timeout=30)
        v = c.checkpoints(jid)[-1]
        assert v["checkpoint_id"] == 9 and v["source"] == "vacate", v
        assert v["kind"] == "incremental" and v["parent_id"] == 8, v
        check_retention(c, jid, {7, 8, 9})
        c.cmd("scontrol", "checkpoint", "restart", jid, user=test_user)
        c.wait_state(jid, "RUNNING", timeout=60)

        # The restored run's first checkpoint is full: tracking starts anew with a run.
        checkpoint_after(c, d, jid, test_user, 3, "vacate")
        c.wait_state(jid, "PENDING", timeout=30)
        f = c.checkpoints(jid)[-1]
        assert f["checkpoint_id"] == 10 and f["kind"] == "full" and f["parent_id"] == 0, f
        check_retention(c, jid, {7, 8, 9, 10})

        # Back to the older incremental 9: what was written since is written again.
        c.cmd("scontrol", "checkpoint", "restart", jid, "CheckpointId=9", user=test_user)
        c.wait_state(jid, "COMPLETED", timeout=240)
        assert c.job(jid)["restarts"] == 2
        assert_same_as_reference(d, jid, reference, test_user)
    finally:
        c.stop()


def test_damaged_link_falls_back_to_a_chain_that_verifies(e2e: E2E, build_dir: Path, test_user, reference):
    """Link 3 of a five-link chain is damaged after the vacate: the restart of the newest
    fails before any process exists, and so do those of 4 and 3 (each marked Failed);
    checkpoint 2, whose chain verifies, restores and the job ends as if uninterrupted."""
    c = Cluster(build_dir, e2e.jobs_dir.parent / "cluster-incremental-damaged", CRIU_Incremental="YES",
                CRIU_FullEvery=10, CRIU_MaxEpochs=10).start()
    try:
        d = workdir(e2e, "incremental-damaged", test_user)
        jid = c.sbatch("job.sh", STEPS, DELAY, user=test_user, cwd=d)
        c.wait_state(jid, "RUNNING")
        for n in range(1, 5):
            checkpoint_after(c, d, jid, test_user, 2)
        checkpoint_after(c, d, jid, test_user, 2, "vacate")
        c.wait_state(jid, "PENDING", timeout=30)
        cks = c.checkpoints(jid)
        assert [x["kind"] for x in cks] == ["full"] + ["incremental"] * 4, cks
        assert [x["parent_id"] for x in cks] == [0, 1, 2, 3, 4], cks
        # Damage the biggest file of link 3 (its page stream) in the middle.
        link3 = Path(cks[2]["location"])
        victim = max((p for p in link3.iterdir() if p.is_file()), key=lambda p: p.stat().st_size)
        data = bytearray(victim.read_bytes())
        mid = len(data) // 2
        data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
        victim.write_bytes(bytes(data))

        r = c.cmd("scontrol", "checkpoint", "restart", jid, user=test_user)
        assert "checkpoint 5" in r.stdout, r.stdout
        c.wait_state(jid, "COMPLETED", timeout=300)
        assert_same_as_reference(d, jid, reference, test_user)
        cks = {x["checkpoint_id"]: x for x in c.checkpoints(jid)}
        assert [cks[i]["status"] for i in range(1, 6)] == ["Present", "Present", "Failed", "Failed", "Failed"], cks
        for i in (3, 4, 5):
            # The engine names the damaged link in each refusal.
            assert str(link3) in cks[i]["reason"], cks[i]
        history = "\n".join(c.job(jid).get("history", []))
        assert "falling back to checkpoint 2" in history, history
    finally:
        c.stop()


def test_pre_dump_with_delay(e2e: E2E, build_dir: Path, test_user, reference):
    """CRIU_PreDump = YES, CRIU_PreDumpDelay = 1: each checkpoint copies the job's memory
    while it runs (DIR.pre), waits a second, then freezes it only to store what changed.
    Retention removes a checkpoint's pre-dump with it; a vacate and restart from such a
    checkpoint give the uninterrupted run's output."""
    c = Cluster(build_dir, e2e.jobs_dir.parent / "cluster-pre-dump", CRIU_PreDump="YES", CRIU_PreDumpDelay=1,
                CRIU_MaxEpochs=1).start()
    try:
        d = workdir(e2e, "pre-dump", test_user)
        jid = c.sbatch("job.sh", STEPS, DELAY, user=test_user, cwd=d)
        c.wait_state(jid, "RUNNING")
        for n in (1, 2):
            checkpoint_after(c, d, jid, test_user, 3)
            x = c.checkpoints(jid)[-1]
            assert x["status"] == "Present" and x["kind"] == "pre-dump" and x["parent_id"] == 0, x
            assert x["duration"] >= 1.0, "the delay is part of the checkpoint"
            pre = Path(x["location"] + ".pre")
            assert pre.is_dir(), f"{pre}: the pre-dump the checkpoint needs"
            assert x["chain_size"] > x["size"], x
        first, second = c.checkpoints(jid)
        assert first["status"] == "Cleared", first
        names = lambda: sorted(p.name for p in (c.ckpt_dir / str(jid)).iterdir())  # noqa: E731
        c.wait_for(lambda: names() == ["2", "2.pre"], 20, f"only checkpoint 2 and its pre-dump on disk: {names()}")
        show = subprocess.run([str(build_dir / "src/tools/fsched-ckpt"), "show", "--dir", second["location"]],
                              capture_output=True, text=True, timeout=60)
        assert show.returncode == 0 and "2.pre" in show.stdout, show.stdout + show.stderr

        c.cmd("scontrol", "checkpoint", "vacate", jid, user=test_user)
        c.wait_state(jid, "PENDING", timeout=60)
        v = c.checkpoints(jid)[-1]
        assert v["source"] == "vacate" and v["kind"] == "pre-dump", v
        c.cmd("scontrol", "checkpoint", "restart", jid, user=test_user)
        c.wait_state(jid, "COMPLETED", timeout=300)
        assert_same_as_reference(d, jid, reference, test_user)
    finally:
        c.stop()


def test_incremental_with_pre_dump(e2e: E2E, build_dir: Path, test_user, reference):
    """Both on, CRIU_FullEvery = 2: the full checkpoints are made on a pre-dump, the
    incrementals on the checkpoint before (their freeze is short already). A vacate
    incremental on a pre-dumped one restores through both (N -> N-1 -> N-1.pre). With
    CRIU_TrackMethod = hash: every link compares page hashes (the images say so)."""
    c = Cluster(build_dir, e2e.jobs_dir.parent / "cluster-incremental-pre-dump", CRIU_Incremental="YES",
                CRIU_FullEvery=2, CRIU_PreDump="YES", CRIU_PreDumpDelay=0, CRIU_MaxEpochs=1,
                CRIU_TrackMethod="hash").start()
    try:
        d = workdir(e2e, "incremental-pre-dump", test_user)
        jid = c.sbatch("job.sh", STEPS, DELAY, user=test_user, cwd=d)
        c.wait_state(jid, "RUNNING")
        for n in (1, 2, 3):
            checkpoint_after(c, d, jid, test_user, 2)
        checkpoint_after(c, d, jid, test_user, 2, "vacate")
        c.wait_state(jid, "PENDING", timeout=60)
        cks = c.checkpoints(jid)
        assert [(x["kind"], x["parent_id"]) for x in cks] == \
            [("pre-dump", 0), ("incremental", 1), ("pre-dump", 0), ("incremental", 3)], cks
        # MaxEpochs = 1 keeps 4, which needs 3 and 3's pre-dump.
        assert [x["status"] for x in cks] == ["Cleared", "Cleared", "Present", "Present"], cks
        names = lambda: sorted(p.name for p in (c.ckpt_dir / str(jid)).iterdir())  # noqa: E731
        c.wait_for(lambda: names() == ["3", "3.pre", "4"], 20, f"only what checkpoint 4 needs on disk: {names()}")
        for name in ("3", "4"):
            m = json.loads((c.ckpt_dir / str(jid) / name / "manifest.json").read_text())
            tracks = {v.get("track", "none") for p in m["processes"] for v in p["vmas"]
                      if not v.get("shared") and v["kind"] in ("anon", "heap", "stack")}
            assert tracks == {"hash"}, (name, tracks)
        c.cmd("scontrol", "checkpoint", "restart", jid, user=test_user)
        c.wait_state(jid, "COMPLETED", timeout=300)
        assert_same_as_reference(d, jid, reference, test_user)
    finally:
        c.stop()
