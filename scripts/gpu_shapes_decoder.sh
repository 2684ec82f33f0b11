#!/usr/bin/env bash
# Second GPU call of the v6 shapes bundle (docs/bundles.md, "v6: the GPU run"): the decoder that
# scripts/gpu_shapes.sh fine-tuned onto CLIP run Q, trained on alone with every core rendering.
#
#   OUT=/tmp/gpu-out CLIP=runs/gpu1/pack/clip_q/clip DEC=runs/gpu1/pack/decoder_q/decoder \
#       bash scripts/gpu_shapes_decoder.sh
#
# About 3.5 minutes; the export comes back as a bf16 component in OUT/pack.tar.part-*.
set -u
OUT=${OUT:-runs/gpu-out}
W=${W:-/tmp/gpu-work2}
PY=${PY:-python3}
T=${T:-1}
CLIP=${CLIP:-runs/gpu1/pack/clip_q/clip}
DEC=${DEC:-runs/gpu1/pack/decoder_q/decoder}
NW=${NW:-14}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$W/logs" "$OUT"
sec() { $PY -c "print(max(int($1 * $T), 5))"; }
timeout -s TERM -k 20 "$(sec 215)" $PY -m unclip -q train decoder --data shapes --clip "$CLIP" \
    --preset decoder-shapes-flat --init-from "$DEC" --batch-size 128 --lr 3e-4 --warmup 100 \
    --ema-decay 0.999 --steps 40000 --time-budget "$(sec 185)" --sample-every 0 --save-every 1000 \
    --log-every 100 --workers "$NW" --seed 23 --out "$W/decoder_q2" >"$W/logs/decoder_q2.log" 2>&1
echo "rc=$?"
$PY scripts/gpu_pack.py "$W" "$W/pack"
cp -r "$W/logs" "$W/pack/"
tar -cf "$W/pack.tar" -C "$W" pack
split -b 15M -d "$W/pack.tar" "$OUT/pack.tar.part-"
ls -la "$OUT"
