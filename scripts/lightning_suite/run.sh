#!/usr/bin/env bash
# Run Lightning's own checkpointing tests twice: as shipped (control), and with
# FtstoreCheckpointIO injected into every Trainer (ftstore_inject.py). Lightning's code is
# fetched, never committed here.
#
#   scripts/lightning_suite/run.sh LIGHTNING_CHECKOUT [PYTHON]
#
# LIGHTNING_CHECKOUT: a clone of github.com/Lightning-AI/pytorch-lightning at the tag of the
# installed lightning (e.g. `git clone --branch 2.6.5 ...`). PYTHON: an interpreter with
# lightning, torch, ftstore's dependencies and Lightning's test requirements for these files
# (pytest, pytest-rerunfailures, cloudpickle, jsonargparse, tensorboardX).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
lt=$(cd "$1" && pwd)
py=${2:-python}
# whole files about checkpoints, and the checkpoint/resume tests of two broader ones
files=(
  tests_pytorch/checkpointing
  tests_pytorch/callbacks/test_model_checkpoint_additional_cases.py
  tests_pytorch/callbacks/test_model_checkpoint_edge_cases.py
  tests_pytorch/callbacks/test_model_checkpoint_manual_opt.py
  tests_pytorch/callbacks/test_model_checkpoint_step_interval_val_metric.py
  tests_pytorch/trainer/connectors/test_checkpoint_connector.py
  tests_pytorch/models/test_restore.py
  tests_pytorch/plugins/test_checkpoint_io_plugin.py
  tests_pytorch/plugins/test_async_checkpoint.py
)
picked=(tests_pytorch/trainer/test_trainer.py tests_pytorch/loops/test_loops.py -k "ckpt or checkpoint or resume or restore")
common=(-c "$lt/pyproject.toml" --rootdir="$lt/tests" -p no:cacheprovider -q -rfE --color=no
        --ignore=tests_pytorch/checkpointing/test_legacy_checkpoints.py)
cd "$lt/tests"
for run in control ftstore; do
  if [ "$run" = control ]; then echo "== control: Lightning's own CheckpointIO"; plugin=(); path="$repo"
  else echo "== FtstoreCheckpointIO in every Trainer"; plugin=(-p ftstore_inject); path="$repo:$here"; fi
  PYTHONPATH="$path" "$py" -m pytest "${plugin[@]}" "${common[@]}" "${files[@]}" | grep -E "^(FAILED|ERROR|ftstore:)|passed|failed" || true
  PYTHONPATH="$path" "$py" -m pytest "${plugin[@]}" "${common[@]}" "${picked[@]}" | grep -E "^(FAILED|ERROR|ftstore:)|passed|failed" || true
done
