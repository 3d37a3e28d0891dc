#!/usr/bin/env bash
# Patient-grouped cross-validation of kather8 on the 228 shared Kather 2016 tiles: one
# grouped split (no patient on both sides), one training per fold with the same
# settings, and the pooled accuracy of each fold's LAST epoch on its held-out patients
# (no model selection on the held-out fold). Extra training arguments pass through,
# e.g. --init models/pcam.
# usage: scripts/kather-cv.sh OUT [FOLDS=4] [EPOCHS=40] [-- extra train args]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/kather-cv.sh OUT [FOLDS] [EPOCHS] [-- train args]}
folds=${2:-4}
epochs=${3:-40}
shift $(($# < 3 ? $# : 3))
[[ ${1:-} == -- ]] && shift
bin=${HISTOMAP:-target/release/histomap}
data=../shared/data/kather2016
[[ -d target/extra/kather-glass ]] || scripts/make-glass-tiles.sh
mkdir -p "$out"
"$bin" split --data "$data" --pipeline pipelines/kather8.toml --out "$out/split.csv" \
  --folds "$folds" --seed 0
for ((f = 0; f < folds; f++)); do
  [[ -f $out/fold$f/training.csv ]] && [[ $(($(wc -l < "$out/fold$f/training.csv") - 1)) -ge $epochs ]] && continue
  resume=(); [[ -f $out/fold$f/checkpoint.json ]] && resume=(--resume)
  "$bin" train --data "$data" --pipeline pipelines/kather8.toml --out "$out/fold$f" \
    --split "$out/split.csv" --fold "$f" --epochs "$epochs" --patience "$epochs" \
    --batch-size 16 --extra-train target/extra/kather-glass --quiet "${resume[@]}" "$@"
done
# Pooled over folds: Σ (last-epoch accuracy × held-out tiles) / Σ held-out tiles.
held_out=()
for ((f = 0; f < folds; f++)); do
  held_out[f]=$(awk -F, -v f="$f" 'NR > 1 && $NF == f' "$out/split.csv" | wc -l)
done
for ((f = 0; f < folds; f++)); do
  tail -1 "$out/fold$f/training.csv" | awk -F, -v f="$f" -v n="${held_out[f]}" \
    '{ print f, n, $5, $6 }'
done | awk '{ printf "fold %d: %d tiles, last-epoch accuracy %.3f, balanced %.3f\n", $1, $2, $3, $4
              hit += $2 * $3; n += $2 }
            END { printf "pooled patient-grouped CV accuracy: %.3f (%d tiles)\n", hit / n, n }' |
  tee "$out/cv.txt"
# Per class, pooled over folds: each fold's saved model (its best validation epoch, so
# this table is a little optimistic) on its held-out patients, in the default precision.
# The same in f32 and plain int8: whether the precision changes the count. (`train`
# chose each fold's recheck margin on these held-out tiles; plain int8 has none.)
for ((f = 0; f < folds; f++)); do
  # Manifest paths are read relative to the manifest: make them absolute.
  awk -F, -v f="$f" -v here="$PWD" 'NR == 1 { print "path,label,group" }
    NR > 1 && $NF == f { print ($1 ~ /^\// ? "" : here "/") $1 "," $2 "," $3 }' \
    "$out/split.csv" >"$out/fold$f/heldout.csv"
  for p in auto f32 int8; do
    "$bin" evaluate --model "$out/fold$f" --data "$out/fold$f/heldout.csv" --precision "$p" \
      -o "$out/fold$f/heldout-$p" --quiet >/dev/null
  done
done
# Every fold's held-out predictions in precision $1, without headers.
held_out_predictions() {
  for ((f = 0; f < folds; f++)); do tail -n +2 "$out/fold$f/heldout-$1/predictions.csv"; done
}
held_out_predictions auto |
  awk -F, '{ n[$2]++; if ($2 == $3) hit[$2]++ }
           END { printf "per class (best epochs, pooled):"
                 for (c in n) printf " %s %d/%d", c, hit[c], n[c]; printf "\n" }' |
  tee -a "$out/cv.txt"
for p in auto f32 int8; do
  held_out_predictions "$p" |
    awk -F, -v p="$p" '{ n++; if ($2 == $3) hit++ } END { printf "held out, %s: %d/%d right\n", p, hit, n }'
done | tee -a "$out/cv.txt"
# The same pooling at every epoch: shows whether a shorter schedule would generalise
# better across patients (reported, never used to pick the shipped recipe's epochs).
for ((f = 0; f < folds; f++)); do
  awk -F, -v n="${held_out[f]}" 'NR > 1 { print $1, n, $5 }' "$out/fold$f/training.csv"
done | awk '{ hit[$1] += $2 * $3; n[$1] += $2; if ($1 > last) last = $1 }
            END { printf "pooled accuracy by epoch:"
                  for (e = 1; e <= last; e++) printf " %d:%.3f", e, hit[e] / n[e]
                  printf "\n" }' |
  tee -a "$out/cv.txt"
