#!/usr/bin/env bash
# fsched demo, as root on a fresh Debian 12 machine:
#   installs the dependencies, builds, then
#   A. checkpoints a running Python job part-way with fsched-ckpt, restores it, lets it
#      finish, and checks that its output is byte-identical to an uninterrupted run;
#   B. runs the same job as a batch job on a one-node fsched cluster (fschedctld +
#      fschedd on loopback, MUNGE): sbatch --checkpoint, periodic checkpoints, scontrol
#      checkpoint vacate and restart, and the same byte-for-byte comparison.
#   Prints PASS or FAIL (exit status 0 or 1).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
build=${FSCHED_BUILD:-build}
case $build in /*) ;; *) build=$repo/$build ;; esac

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Installing dependencies"
scripts/install-deps.sh
say "Building ($build)"
cmake -G Ninja -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C "$build"
ckpt=$build/src/tools/fsched-ckpt

demo=${FSCHED_DEMO_DIR:-/var/tmp/fsched-demo}
job=$demo/job        # the job's directory: the same path for both runs, as it is baked into the checkpoint
image=$demo/image
rm -rf "$demo"
mkdir -p "$demo/reference"

# The job: an unmodified Python program computing for ~10 s, printing a progress line
# per step and appending results to a file it keeps open.
setup_job() {
  rm -rf "$job"
  mkdir -p "$job"
  cat >"$job/job.py" <<'PY'
import hashlib, math, sys, time

steps = 40
primes = []
n = 2
h = hashlib.sha256()

def is_prime(n):
    for p in primes:
        if p * p > n:
            return True
        if n % p == 0:
            return False
    return True

with open("results.txt", "a") as out:
    for step in range(1, steps + 1):
        # the next 1500 primes, by trial division
        target = len(primes) + 1500
        while len(primes) < target:
            if is_prime(n):
                primes.append(n)
            n += 1
        h.update(str(primes[-1500:]).encode())
        s = sum(math.log(p) for p in primes[-1500:])
        print(f"step {step:2}/{steps}: {len(primes)} primes, largest {primes[-1]}, "
              f"sum of logs {s:.6f}, digest {h.hexdigest()[:16]}", flush=True)
        out.write(f"{step} {primes[-1]} {h.hexdigest()}\n")
        out.flush()
        time.sleep(0.2)
print("done:", h.hexdigest(), flush=True)
PY
}

run_args() { echo --stdout "$job/stdout" --stderr "$job/stderr" --cwd "$job"; }

say "A1. Uninterrupted run: fsched-ckpt run -- /usr/bin/python3 job.py"
setup_job
start=$(date +%s%N)
set +e
"$ckpt" run $(run_args) -- /usr/bin/python3 "$job/job.py"
ref_status=$?
set -e
echo "exit status $ref_status after $(( ($(date +%s%N) - start) / 1000000 )) ms; last lines:"
tail -n 2 "$job/stdout"
cp "$job/stdout" "$job/stderr" "$job/results.txt" "$demo/reference/"

say "A2. The same job, started detached"
setup_job
pid=$("$ckpt" run --detach $(run_args) -- /usr/bin/python3 "$job/job.py")
echo "job's init has host PID $pid"
for _ in $(seq 600); do   # until half of the progress lines are out (at most 60 s)
  [ -f "$job/stdout" ] && [ "$(grep -c '^step' "$job/stdout")" -ge 20 ] && break
  sleep 0.1
done
echo "progress so far:"
tail -n 2 "$job/stdout"

say "A3. Checkpoint it part-way: fsched-ckpt dump --pid $pid --dir $image"
"$ckpt" dump --pid "$pid" --dir "$image"
if kill -0 "$pid" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$pid/status"; then
  echo "the job is still running after the dump?"; exit 1
fi
echo "the job is gone; $(grep -c '^step' "$job/stdout") progress lines were written before the dump"

say "A4. What the image holds: fsched-ckpt show --dir $image"
"$ckpt" show --dir "$image" | grep -E '^image|^  format|^  pages|^process|threads, '
echo "(fsched-ckpt show --json prints the whole manifest)"
du -sh "$image"

say "A5. Restore it and let it finish: fsched-ckpt restore --dir $image"
set +e
"$ckpt" restore --dir "$image"
status=$?
set -e
echo "restored job exited with status $status (uninterrupted: $ref_status)"
tail -n 2 "$job/stdout"

say "A6. Compare with the uninterrupted run"
ok=1
for f in stdout stderr results.txt; do
  if cmp "$demo/reference/$f" "$job/$f"; then
    echo "  $f: identical ($(wc -c <"$job/$f") bytes)"
  else
    ok=0
    diff "$demo/reference/$f" "$job/$f" | head -n 10
  fi
done
[ "$status" = "$ref_status" ] || ok=0

say "B. The scheduler: fschedctld and fschedd on loopback, jobs through sbatch"
scripts/start-munge.sh
cluster=$demo/cluster
mkdir -p "$cluster"
cat >"$cluster/fsched.conf" <<EOF
# a one-node demo cluster
ClusterName = demo
ControlMachine = localhost
ControlAddr = 127.0.0.1
ControlPort = 17917
StateSaveLocation = $cluster/state
SlurmdSpoolDir = $cluster/spool
CheckpointType = checkpoint/criu
CheckpointDir = $cluster/checkpoint
CRIU_MaxEpochs = 2
SlurmctldPidFile = $cluster/fschedctld.pid
SlurmctldLogFile = $cluster/fschedctld.log
SlurmdPidFile = $cluster/fschedd.pid
SlurmdLogFile = $cluster/fschedd.log
FschedCkptPath = $ckpt
NodeName=demo1 NodeAddr=127.0.0.1 Port=17918 CPUs=2 RealMemory=2000
PartitionName=demo Nodes=demo1 Default=YES MaxTime=INFINITE State=UP
EOF
export FSCHED_CONF=$cluster/fsched.conf PATH=$build/src/cmds:$PATH
stop_cluster() {
  for f in "$cluster/fschedd.pid" "$cluster/fschedctld.pid"; do
    if [ -f "$f" ]; then kill "$(cat "$f")" 2>/dev/null || true; fi
  done
}
trap stop_cluster EXIT
"$build/src/ctld/fschedctld"        # daemonizes; logs to $cluster/fschedctld.log
"$build/src/noded/fschedd" -N demo1
for _ in $(seq 100); do
  sinfo -h 2>/dev/null | grep -q idle && break
  sleep 0.1
done
echo "\$ sinfo"
sinfo
setup_job
printf '#!/bin/bash\n#SBATCH -J primes\nexec /usr/bin/python3 job.py\n' >"$job/job.sh"
echo "\$ sbatch --checkpoint=0:03 job.sh"
jid=$(cd "$job" && sbatch --parsable --checkpoint=0:03 job.sh)
echo "Submitted batch job $jid"
wait_state() {  # waits until the job's state (squeue %T) is $1
  for _ in $(seq 600); do
    [ "$(squeue -h -j "$jid" -t all -o %T)" = "$1" ] && return 0
    sleep 0.1
  done
  echo "job $jid did not become $1"
  squeue -j "$jid" -t all
  exit 1
}
wait_state RUNNING
for _ in $(seq 300); do   # two periodic checkpoints (every 3 s)
  [ "$(scontrol checkpoint list "$jid" --json | grep -c '"status": "Present"')" -ge 2 ] && break
  sleep 0.1
done
echo "\$ squeue"
squeue
echo "\$ scontrol checkpoint list $jid"
scontrol checkpoint list "$jid"
echo "\$ scontrol checkpoint vacate $jid"
scontrol checkpoint vacate "$jid"
squeue -j "$jid"
echo "\$ scontrol checkpoint restart $jid"
scontrol checkpoint restart "$jid"
wait_state COMPLETED
echo "\$ scontrol show job $jid | grep -E 'JobState|Restarts|Checkpoint'"
scontrol show job "$jid" | grep -E 'JobState|Restarts|Checkpoint'
scontrol checkpoint list "$jid"
if cmp "$demo/reference/stdout" "$job/slurm-$jid.out" && cmp "$demo/reference/results.txt" "$job/results.txt"; then
  echo "  slurm-$jid.out and results.txt: identical to the uninterrupted run"
else
  ok=0
fi

if [ $ok = 1 ]; then
  printf '\n\033[1;32mPASS\033[0m: the checkpointed and restored jobs (fsched-ckpt, then sbatch/vacate/restart) produced byte-identical output\n'
  exit 0
fi
printf '\n\033[1;31mFAIL\033[0m: the restored job differs from the uninterrupted run\n'
exit 1
