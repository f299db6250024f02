#!/usr/bin/env bash
# The toy model in two legs instead of seven: a candidate recipe, adopted (in place of scripts/train_toy.sh and
# the shipped weights) only after a full run whose tables hold (README, Training). Stage I with canvas positions,
# then one Stage II leg with one cosine schedule that has canvas positions, the memory terms and the keyframe
# term from its first step. Writes outputs/train/toy-fast-*; installs nothing. Rerun to resume.
#   bash scripts/train_toy_fast.sh                  # idle cores: torch's default threads (one per core)
#   TOY_THREADS=1 bash scripts/train_toy_fast.sh    # cores shared with other work: one thread was 6.7x faster
#                                                   # than two there (docs/RESULTS.md, "Training speed on 2 cores")
set -euo pipefail
cd "$(dirname "$0")/.."
C=framepack_history/training/configs
if [ -n "${TOY_THREADS:-}" ]; then export OMP_NUM_THREADS="$TOY_THREADS"; fi
python -m framepack_history train stage1 --config $C/toy_fast_stage1.toml
python -m framepack_history train stage2 --config $C/toy_fast_stage2.toml
echo "trained outputs/train/toy-fast-stage2: evaluate it against the shipped model before installing it"
