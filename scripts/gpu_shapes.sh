#!/usr/bin/env bash
# The shapes bundle trained longer on one GPU, in one call of about 8 minutes (docs/bundles.md, "GPU run").
#
#   OUT=/tmp/gpu-out bash scripts/gpu_shapes.sh
#
# Two candidates, trained side by side on one GPU (each stage a process; the small models leave the
# GPU mostly idle, so they share it well), every stage under a --time-budget so the cosine
# schedules finish by the deadline:
#   S: the shipped CLIP (run P2) kept; its decoder fine-tuned on from the shipped one, both priors
#      retrained on 6x the embeddings.
#   Q: CLIP P2 fine-tuned further with background edits at a 2x batch (the text tower's colour /
#      background separation was still improving, docs/clip.md); then a decoder fine-tuned from
#      the shipped one on its embeddings, and both priors on its embeddings.
# The exports come back as bf16 component directories packed in OUT/pack.tar.part-* (the device
# tool returns at most 8 files of 16 MiB). On the H200 (2026-11-27) the stages shared 16 cores and
# waited for data 41-98 % of the time; the priors got ~50 steps and were retrained on the CPU
# (docs/bundles.md). Which candidate ships is decided on the CPU by
# bench/shapes_fidelity.py and `unclip evaluate --quick`, never here.
#
# Scale knobs for a dry run on a CPU: T (multiplies every time), LIMIT (embeddings per CLIP),
# BS_* (batch sizes), NW (render workers per stage).
set -u
OUT=${OUT:-runs/gpu-out}
W=${W:-/tmp/gpu-work}
PY=${PY:-python3}
T=${T:-1}
LIMIT=${LIMIT:-300000}
LIMIT_Q=${LIMIT_Q:-200000}
NW=${NW:-4}
BS_CLIP=${BS_CLIP:-256}
BS_DEC=${BS_DEC:-128}
BS_PRIOR=${BS_PRIOR:-256}
CLIP0=${CLIP0:-runs/clip-shapes-p2/clip}
DEC0=${DEC0:-runs/bundle-shapes-v5/decoder_pf/decoder}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$W/logs" "$OUT"
t0=$(date +%s)
now() { echo $(($(date +%s) - t0)); }
sec() { $PY -c "print(max(int($1 * $T), 5))"; }
DEADLINE=$(sec 470)

# stage NAME ARGS...: run `unclip ARGS` in the background, log to W/logs/NAME.log, rc to W/NAME.rc.
# A stage still running 15 s after the deadline gets SIGTERM (a trainer saves and exports), so the
# pack below always runs inside the call.
stage() {
    local name=$1
    shift
    echo "[$(now) s] start $name"
    (timeout -s TERM -k 30 $((DEADLINE + $(sec 15) - $(now))) $PY -m unclip -q "$@" >"$W/logs/$name.log" 2>&1
        echo $? >"$W/$name.rc"
        echo "[$(now) s] done $name rc=$(cat "$W/$name.rc")") &
    eval "PID_$name=$!"
}
ok() { [ "$(cat "$W/$1.rc" 2>/dev/null)" = 0 ]; }
wait_for() { eval "wait \$PID_$1"; }
left() { echo $((DEADLINE - $(now) - $(sec 25))); } # seconds a stage started now may train

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
$PY -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), sys.version.split()[0])"

TRAIN_PRIOR=(--steps 12000 --batch-size "$BS_PRIOR" --warmup 200 --sample-every 2000 --save-every 2000 --log-every 100)
# priors X SEED: both priors on W/embed_X, in the background, until the deadline.
priors() {
    stage "prior_$1" train prior --kind diffusion --data "$W/embed_$1" --preset prior-diffusion-shapes-bundle \
        "${TRAIN_PRIOR[@]}" --time-budget "$(left)" --seed "$2" --out "$W/prior_$1"
    stage "prior_ar_$1" train prior --kind ar --data "$W/embed_$1" --preset prior-ar-shapes-bundle \
        "${TRAIN_PRIOR[@]}" --time-budget "$(left)" --seed $(($2 + 1)) --out "$W/prior_ar_$1"
}

stage clip_q train clip --data shapes --preset clip-shapes-resnet-color --aux-attributes 1 \
    --init-from "$CLIP0" --aux-shape-weight 20 --aux-background-weight 5 --background-edits 0.25 \
    --batch-size "$BS_CLIP" --lr 2e-4 --warmup 100 --steps 20000 --time-budget "$(sec 150)" \
    --sample-every 0 --save-every 500 --log-every 50 --workers $((NW + 2)) --seed 11 --out "$W/clip_q"
stage embed_s embed --clip "$CLIP0" --data shapes --limit "$LIMIT" --batch-size 1000 --workers "$NW" \
    --out "$W/embed_s"
stage decoder_s train decoder --data shapes --clip "$CLIP0" --preset decoder-shapes-flat --init-from "$DEC0" \
    --batch-size "$BS_DEC" --lr 4e-4 --warmup 200 --ema-decay 0.999 --steps 40000 --time-budget "$(left)" \
    --sample-every 0 --save-every 2000 --log-every 100 --workers "$NW" --seed 21 --out "$W/decoder_s"

wait_for embed_s
if ok embed_s; then
    priors s 31
fi

wait_for clip_q
if ok clip_q; then
    stage decoder_q train decoder --data shapes --clip "$W/clip_q/clip" --preset decoder-shapes-flat \
        --init-from "$DEC0" --batch-size "$BS_DEC" --lr 4e-4 --warmup 200 --ema-decay 0.999 --steps 40000 \
        --time-budget "$(left)" --sample-every 0 --save-every 2000 --log-every 100 --workers "$NW" --seed 22 \
        --out "$W/decoder_q"
    stage embed_q embed --clip "$W/clip_q/clip" --data shapes --limit "$LIMIT_Q" --batch-size 1000 \
        --workers $((NW * 2)) --out "$W/embed_q"
    wait_for embed_q
    if ok embed_q; then
        priors q 33
    fi
fi
wait
echo "[$(now) s] training done"

# Pack: every export as a bf16 component directory (the CLIP stays fp32: it is small and may be
# fine-tuned again), with the logs, into one tar split into 15 MiB parts.
$PY scripts/gpu_pack.py "$W" "$W/pack"
cp -r "$W/logs" "$W/pack/logs"
for f in "$W"/*.rc; do echo "$(basename "$f" .rc) rc=$(cat "$f")"; done | tee "$W/pack/rc.txt"
tar -cf "$W/pack.tar" -C "$W" pack
split -b 15M -d "$W/pack.tar" "$OUT/pack.tar.part-"
ls -la "$OUT"
echo "[$(now) s] packed"
