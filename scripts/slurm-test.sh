#!/usr/bin/env bash
# The Slurm test, on a real single-node cluster started here (scripts/slurm-local.sh;
# needs root, Debian's slurm-wlm and munge: scripts/setup.sh --test installs them).
#
# 1. A folder of 7 slides: two copies of the real Aperio SVS, the real NDPI, the
#    generated 5000×5000 strip TIFF and 100,000×80,000 pyramid, a Kather tile as PNG
#    and one truncated SVS. A single process maps them: the reference.
# 2. `histomap slurm --array 3 --submit`: every good slide is done exactly once (the
#    run log), with outputs byte-identical to the reference; the corrupt one is
#    reported failed.
# 3. A fresh run: while the 5000×5000 slide is being mapped, its array task is
#    cancelled with scancel; the same script is resubmitted, and only unfinished
#    slides (the cancelled one, the failed one, any not yet started) run again.
#
# 4. `histomap report` over the final output (tests/batch.rs renders it in Chromium
#    when HISTOMAP_SLURM_OUT names it, as scripts/test.sh does).
# 5. What the partition offers: more CPUs than the node has is refused before
#    submission; with --no-check it is submitted, and `status` shows every slide
#    waiting for a pending task, with Slurm's reason (then the job is cancelled); with
#    no --cpus, the default fits the node and its task runs.
#
# usage: scripts/slurm-test.sh   (after `cargo build --release`; prints one summary line)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bin=$root/target/release/histomap
data=${HISTOMAP_DATA:-$root/../shared/data}
work=$root/target/slurm-test
t0=$(date +%s)

fail() { echo "slurm-test: FAILED: $*" >&2; exit 1; }
[[ -x $bin ]] || fail "$bin missing: cargo build --release first"

cluster=$work/cluster
# A cluster left by an interrupted run would keep the ports.
[[ -d $cluster ]] && scripts/slurm-local.sh stop "$cluster"
rm -rf "$work"
mkdir -p "$work/slides"
scripts/make-slides.sh "$root/target/slides" >/dev/null
eval "$(scripts/slurm-local.sh start "$cluster")"
trap 'scripts/slurm-local.sh stop "$cluster"' EXIT

s=$work/slides
cp "$data/slides/cmu_small_region.svs" "$s/cmu_a.svs"
cp "$data/slides/cmu_small_region.svs" "$s/cmu_b.svs"
cp "$data/slides/stritt_dapi_fluorescence.ndpi" "$s/dapi.ndpi"
ln -s "$root/target/slides/kather5000.tif" "$s/kather5000.tif"
ln -s "$root/target/slides/gigapixel.tif" "$s/gigapixel.tif"
vips copy "$(find "$data/kather2016" -name '*.tif' | LC_ALL=C sort | head -1)" "$s/tile.png"
head -c 300000 "$data/slides/cmu_small_region.svs" > "$s/corrupt.svs"
good=(cmu_a cmu_b dapi gigapixel kather5000 tile)
# A Kather tile has no MPP; tell histomap the dataset's.
args=("$s" -p pipelines/kather8.toml --slide-mpp 0.495)

"$bin" heatmap "${args[@]}" -o "$work/ref" --quiet 2>"$work/ref.log" && fail "the corrupt slide did not fail"

# Waits for a job to leave the queue.
wait_job() {
  for _ in $(seq 900); do
    [[ -z $(squeue -h -j "$1" 2>/dev/null) ]] && return 0
    sleep 1
  done
  fail "job $1 still queued after 15 min"
}

# How many times each slide reached an event in OUT's run log: `count OUT EVENT SLIDE`.
count() {
  grep -c "\"event\":\"$2\",\"slide\":\"$3\"" "$1/.histomap/log.jsonl" || true
}

# Every output of the slide but its summary (which holds timings) equals the reference.
same_as_ref() { # OUT SLIDE
  for f in "$work/ref/$2"/*; do
    [[ $(basename "$f") == summary.json ]] && continue
    cmp -s "$f" "$1/$2/$(basename "$f")" || fail "$2/$(basename "$f") differs from the single-process run"
  done
}

# --- 2. One array job over the folder. ---
out=$work/run1
job=$("$bin" slurm "${args[@]}" -o "$out" --array 3 --cpus 1 --mem 2G --submit)
wait_job "$job"
for g in "${good[@]}"; do
  [[ $(count "$out" done "$g") == 1 ]] || fail "run 1: $g done $(count "$out" done "$g") times"
  same_as_ref "$out" "$g"
done
[[ $(count "$out" failed corrupt) == 1 ]] || fail "run 1: corrupt not reported"
"$bin" status "$out" > "$work/status1.txt"
grep -q '^failed   corrupt ' "$work/status1.txt" || fail "status does not report the corrupt slide"
grep -q '^6 done, 1 failed, 0 running, 0 missing (of 7)$' "$work/status1.txt" || fail "status: $(tail -1 "$work/status1.txt")"
tasks=$(grep -o "\"job\":\"${job}_[0-9]*\"" "$out/.histomap/log.jsonl" | sort -u | wc -l)
[[ $tasks == 3 ]] || fail "run 1: $tasks array tasks logged, expected 3"
"$bin" report "$out" >/dev/null

# --- 3. Cancel the task mapping kather5000 mid-slide, then resubmit. ---
out=$work/run2
job=$("$bin" slurm "${args[@]}" -o "$out" --array 3 --cpus 1 --mem 2G --submit)
victim=""
for _ in $(seq 3000); do
  line=$("$bin" status "$out" | grep '^running  kather5000 ' || true)
  if [[ -n $line ]]; then
    victim=$(grep -o "job ${job}_[0-9]*" <<<"$line" | cut -d' ' -f2)
    break
  fi
  sleep 0.1
done
[[ -n $victim ]] || fail "never saw kather5000 running"
scancel "$victim"
wait_job "$job"
[[ -f $out/kather5000/summary.json ]] && fail "kather5000 finished before scancel took effect"
[[ -e $out/kather5000 ]] && fail "a partial kather5000 folder is visible"
declare -A first
for g in "${good[@]}"; do first[$g]=$(count "$out" done "$g"); done

"$bin" status "$out" > "$work/status2a.txt"
job2=$(sbatch --parsable "$out/histomap.sbatch" | cut -d';' -f1)
wait_job "$job2"
reran=()
for g in "${good[@]}" corrupt; do
  starts=$(count "$out" start "$g")
  if [[ $g != corrupt && ${first[$g]} == 1 ]]; then
    [[ $starts == 1 ]] || fail "$g was finished before the resubmission but ran again"
  else
    [[ $starts -ge 1 ]] || fail "$g never ran"
    reran+=("$g")
  fi
done
for g in "${good[@]}"; do
  [[ $(count "$out" done "$g") == 1 ]] || fail "run 2: $g done $(count "$out" done "$g") times"
  same_as_ref "$out" "$g"
done
[[ " ${reran[*]} " == *" kather5000 "* ]] || fail "the cancelled slide did not run again"

"$bin" report "$out" >/dev/null
"$bin" status "$out" > "$work/status2.txt"
grep -q '^6 done, 1 failed, 0 running, 0 missing (of 7)$' "$work/status2.txt" || fail "status after resubmission: $(tail -1 "$work/status2.txt")"
# --- 5. What the partition offers. ---
node_cpus=$(sinfo -h -N -o %c | sort -n | tail -1)
too_many=$((node_cpus + 1))
out=$work/refused
"$bin" slurm "${args[@]}" -o "$out" --array 3 --cpus "$too_many" --submit 2>"$work/refused.log" \
  && fail "--cpus $too_many (the node has $node_cpus) was submitted"
refusal="histomap: --cpus $too_many: no node of partition debug has more than $node_cpus CPUs; Slurm would keep every task pending. Ask for less, or pass --no-check to submit it as it is"
grep -qxF "$refusal" "$work/refused.log" || fail "refusal: $(cat "$work/refused.log")"
[[ -e $out ]] && fail "the refused job left $out"

out=$work/pending
job=$("$bin" slurm "${args[@]}" -o "$out" --array 3 --cpus "$too_many" --no-check --submit 2>/dev/null)
# The scheduler names its reason on its first pass over the new job.
for _ in $(seq 100); do
  "$bin" status "$out" > "$work/status-pending.txt"
  grep -q 'pending: PartitionConfig' "$work/status-pending.txt" && break
  sleep 0.2
done
"$bin" status --json "$out" > "$work/status-pending.json"
scancel "$job"
grep -qx "Slurm job $job: 3 pending (PartitionConfig)" "$work/status-pending.txt" || fail "status of the pending job: $(cat "$work/status-pending.txt")"
waiting=$(grep -cE "^missing  [a-z0-9_]+  job ${job}_[0-2] pending: PartitionConfig \(asks for more than any node of the partition has\)$" "$work/status-pending.txt" || true)
[[ $waiting == 7 ]] || fail "$waiting of 7 slides shown waiting: $(cat "$work/status-pending.txt")"
[[ $(grep -c "\"slurm\":{\"reason\":\"PartitionConfig\",\"state\":\"PENDING\",\"task\":\"${job}_" "$work/status-pending.json") == 7 ]] \
  || fail "status --json of the pending job: $(cat "$work/status-pending.json")"

out=$work/default
job=$("$bin" slurm "$s/tile.png" -p pipelines/kather8.toml --slide-mpp 0.495 -o "$out" --array 1 --submit 2>/dev/null)
fit=$((node_cpus < 4 ? node_cpus : 4))
grep -qx "#SBATCH --cpus-per-task=$fit" "$out/histomap.sbatch" || fail "default --cpus: $(grep cpus "$out/histomap.sbatch")"
grep -q "^# --cpus-per-task=$fit: the default" "$out/histomap.sbatch" || fail "the script does not say --cpus is the default"
wait_job "$job"
"$bin" status "$out" | grep -qx '1 done, 0 failed, 0 running, 0 missing (of 1)' || fail "the default --cpus job did not run"

echo "slurm-test: ok: 7 slides (6 good, 1 corrupt), array of 3 tasks on a single-node Slurm: every good slide done once, identical to one process; cancelled $victim mid-kather5000, resubmission reran only: ${reran[*]}; --cpus $too_many refused on a $node_cpus-CPU node, pending with --no-check and shown so by status; default --cpus $fit ran; $(( $(date +%s) - t0 )) s"
