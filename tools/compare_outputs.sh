#!/usr/bin/env bash
# The files a user reads after the paper configs' tiny runs and `anomalib predict`, as md5 sums, for one version of
# the package: run it for two versions (e.g. a `git worktree` of main and your change) and compare the sums.
#
#   tools/compare_outputs.sh <package root> <output folder> [<data folder>]
#
# The package root goes first on PYTHONPATH (in the environment that is active), so the `anomalib` command of that
# environment runs that version of the plugin. Both runs must share the data folder (its synthetic trees are written
# once), since predictions.csv holds image paths.
set -euo pipefail
root=$(realpath "$1"); out=$2; data=$(realpath -m "${3:-$out/../compare_data}")
export PYTHONPATH=$root
rm -rf "$out"; mkdir -p "$out"; cd "$out"
python -W ignore -c "import anomalib_bayes_pfl; print('package:', anomalib_bayes_pfl.__file__)" 2>/dev/null
if [ ! -d "$data" ]; then
  python -c "
from anomalib_bayes_pfl.data.synthetic import write_tree
write_tree('$data/visa', ['candle', 'pcb1'], layout='visa')
write_tree('$data/MVTecAD', ['bottle', 'metal_nut'], layout='mvtec', seed=1)"
fi
tiny=(--model.clip_model="$root/anomalib_bayes_pfl/assets/tiny-clip.json" --model.clip_pretrained=null
  --model.image_size=64 --model.num_samples=2 --model.stage_one_epochs=1 --model.stage_two_epochs=1)
small=(--data.train_batch_size=4 --data.eval_batch_size=4 --data.num_workers=0 --trainer.accelerator=cpu)
anomalib train --config "$root/configs/bayes_pfl_visa_to_mvtec.yaml" "${tiny[@]}" "${small[@]}" \
  --data.auxiliary_root="$data/visa" --data.target_root="$data/MVTecAD" --default_root_dir=a > a.log 2>&1
anomalib train --config "$root/configs/bayes_pfl_mvtec_to_visa.yaml" "${tiny[@]}" "${small[@]}" \
  --model.k_shot=1 --model.false_alarm_rate=0.3 --model.calibration_images=3 --model.review_fraction=0.25 \
  --data.auxiliary_root="$data/MVTecAD" --data.target_root="$data/visa" --default_root_dir=b > b.log 2>&1
anomalib predict --model BayesPFL --ckpt_path "$(find a -name model.ckpt | head -1)" \
  --data "$data/MVTecAD/bottle/test" --default_root_dir=pa > pa.log 2>&1
anomalib predict --model BayesPFL --ckpt_path "$(find b -name model.ckpt | head -1)" \
  --data "$data/visa/visa_pytorch/candle/test" --model.few_shot_source="$data/visa/visa_pytorch/candle/train/good" \
  --default_root_dir=pb > pb.log 2>&1
find . -name "*.csv" | sort | while read -r file; do echo "$(md5sum < "$file" | cut -c1-12) $file"; done
