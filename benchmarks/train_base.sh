#!/usr/bin/env bash
# Trains the base reader (models/base) with the project's own command: varied synthetic text
# (caocrvfy/data/varied.py) of 1 to 8 characters of 0-9a-zA-Z+-=?, drawn at site-like sizes
# (about 70 x 24 to 200 x 60) and resized to 192 x 64 grey.
#   bash benchmarks/train_base.sh OUT_DIR [MINUTES] [more caocrvfy.train options]
# The fonts are every installed font with all the characters: matplotlib's and the captcha
# library's always; for the shipped base also Debian's, installed first with
#   apt-get install fonts-liberation2 fonts-freefont-ttf fonts-dejavu-core fonts-urw-base35
# Resume an interrupted run with: python3 -m caocrvfy.train --resume OUT_DIR [--time-limit M]
# On a GPU, give more --train-size and --synthetic stream.
set -euo pipefail
out=$1; minutes=${2:-80}; shift $(( $# < 2 ? $# : 2 ))
python3 -m caocrvfy.train --style varied --charset '0-9a-zA-Z+-=?' --min-length 1 --length 8 \
  --width 192 --height 64 --channels 1 --synthetic memory --train-size 100000 --val-size 2000 \
  --filters 32,64,96,128 --dense-units 192 --rnn-units 128 --column-stride 8 \
  --batch-size 128 --learning-rate 0.002 --warmup-epochs 0.5 --schedule cosine --patience 1000 \
  --time-limit "$minutes" --out "$out" "$@"
rm -rf "$out/checkpoint"   # only needed to resume
