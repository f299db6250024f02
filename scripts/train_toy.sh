#!/usr/bin/env bash
# Train the embedded toy model from scratch and install it in framepack_history/weights/toy.
# Every stage resumes from its last checkpoint when the script is run again.
#   bash scripts/train_toy.sh   # Stage I, Stage II, Stage II with canvas positions, Stage II for memory (three legs), keyframes, then copy the weights
set -euo pipefail
cd "$(dirname "$0")/.."
C=framepack_history/training/configs
python -m framepack_history train stage1 --config $C/toy_stage1.toml
python -m framepack_history train stage2 --config $C/toy_stage2.toml
python -m framepack_history train stage2 --config $C/toy_canvas.toml
python -m framepack_history train stage2 --config $C/toy_memory.toml
python -m framepack_history train stage2 --config $C/toy_memory2.toml
python -m framepack_history train stage2 --config $C/toy_memory3.toml
python -m framepack_history train stage2 --config $C/toy_keyframe.toml
W=framepack_history/weights/toy
rm -rf $W/transformer $W/history_encoder $W/vae
cp -r outputs/train/toy-keyframe/{transformer,history_encoder,vae,tokenizer.json} $W/
cp outputs/train/toy-stage1/loss.png $W/loss-stage1.png
cp outputs/train/toy-stage2/loss.png $W/loss-stage2.png
cp outputs/train/toy-canvas/loss.png $W/loss-canvas.png
cp outputs/train/toy-memory/loss.png $W/loss-memory.png
cp outputs/train/toy-memory2/loss.png $W/loss-memory2.png
cp outputs/train/toy-memory3/loss.png $W/loss-memory3.png
cp outputs/train/toy-keyframe/loss.png $W/loss-keyframe.png
echo "installed the toy model in $W"
