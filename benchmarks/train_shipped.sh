#!/usr/bin/env bash
# Trains a shipped model with the project's own command, then scores it on fresh captchas.
#   bash benchmarks/train_shipped.sh 6x62 OUT_DIR [MINUTES]   # 6 of 0-9a-zA-Z, 160x60
#   bash benchmarks/train_shipped.sh 4x36 OUT_DIR [MINUTES]   # 4 of 0-9A-Z, 128x64
#   bash benchmarks/train_shipped.sh 6x62 OUT_DIR 7.5 --init models/captcha-6x62 --learning-rate 0.0008
#       (further arguments go to `caocrvfy.train` and override the ones below)
# On a GPU box without TensorFlow it runs on Keras's JAX backend (KERAS_BACKEND=jax). Captchas
# are drawn by every core but two while the GPU trains (--synthetic stream), into a ring buffer
# of --train-size images: 204,800 is an epoch of 800 steps of 256. MINUTES is the whole run,
# drawing the first 204,800 included (--time-limit). TEST_COUNT (default 5000) sets how many
# fresh captchas score the model.
set -euo pipefail
kind=$1; out=$2; minutes=${3:-7}; shift $(( $# < 3 ? $# : 3 ))
case $kind in
  6x62) data=(--charset 0-9a-zA-Z --length 6 --width 160 --height 60) ;;
  4x36) data=(--charset 0-9A-Z --length 4 --width 128 --height 64) ;;
  *) echo "kind must be 6x62 or 4x36" >&2; exit 2 ;;
esac
python3 -m caocrvfy.train "${data[@]}" --synthetic stream --train-size 204800 --val-size 2000 \
  --batch-size 256 --learning-rate 0.002 --warmup-epochs 1 --schedule cosine --time-limit "$minutes" \
  --patience 1000 --filters 64,128,192,256 --dense-units 256 --rnn-units 192 --column-stride 4 \
  --out "$out" "$@"
rm -rf "$out/checkpoint"   # only needed to resume
python3 -m caocrvfy generate "${data[@]}" --count "${TEST_COUNT:-5000}" --out "/tmp/caocrvfy-test-$kind" >/dev/null
python3 -m caocrvfy evaluate --model "$out" --data "/tmp/caocrvfy-test-$kind" --json | tee "$out/test.json"
