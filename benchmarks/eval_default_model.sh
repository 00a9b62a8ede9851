#!/usr/bin/env bash
# Accuracy of the shipped default model under FastV and the other methods (README tables).
# Resumable: rerun to continue. Outputs: benchmarks/results/default_model/{fastv,methods}/
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/results/default_model
# 20 test scenes x 11 question kinds (cell look-ups and scene-level), asked in the long, LLaVA-style
# phrasing the default model was trained on: 220 samples. The longest answer ("large blue square")
# is 4 words, up to 6 tokens.
DATA=shapes:test:20:all:long
COMMON=(--model default --data "$DATA" --max-new-tokens 6 --no-progress)

# Issue 5: FastV at K in {1,2,3}, R in {25,50,75,90}%, next to random pruning at the same budget.
fastv eval "${COMMON[@]}" --k 1,2,3 --ratio 0.25,0.5,0.75,0.9 --scorer last_token,random --out "$OUT/fastv"

# Issue 10: every method at 1/3, 2/9 and 1/9 of the 144 visual tokens (the field's 192/128/64 of 576).
fastv eval "${COMMON[@]}" --method fastv,fastv_mean --k 2 --keep 48,32,16 --out "$OUT/methods"
fastv eval "${COMMON[@]}" --method random,uniform,pool --keep 48,32,16 --out "$OUT/methods"

# Issue 18: the successors as their official code runs them (positions contiguous) and fastv's variant
# (original positions), plus the composition visionzip+fastv. The README's tables use 110 questions
# (10 scenes x 11 kinds; ~10 minutes for both tables on 2 CPU cores); SUCCESSORS_LIMIT=N for fewer,
# or point --data at $DATA for all 220.
SUCC=(--model default --data shapes:test:10:all:long --limit "${SUCCESSORS_LIMIT:-110}" --max-new-tokens 6 --no-progress)
fastv eval "${SUCC[@]}" --method pdrop,visionzip,divprune --keep 48 --positions contiguous,original --out "$OUT/successors"
fastv eval "${SUCC[@]}" --method visionzip+fastv --keep 48 --out "$OUT/successors"
fastv eval "${SUCC[@]}" --method visionzip,divprune --keep 16 --positions contiguous,original --out "$OUT/successors"
# pdrop's first cut is layer L/4 = 2 of 10, so its layer-average budget cannot go below 2 x 144 / 10 = 28.8.
fastv eval "${SUCC[@]}" --method pdrop,visionzip,divprune --keep 32 --positions contiguous,original --out "$OUT/successors"

# Issue 18: the whole field (each method with its defaults) on the same 110 questions as the successors table.
fastv eval "${SUCC[@]}" --method fastv,dart,cdpruner,holov,vscan,flowcut,sparsevlm,visionzip,divprune,random \
    --keep 48,32,16 --out "$OUT/field"
