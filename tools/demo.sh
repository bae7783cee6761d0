#!/usr/bin/env bash
# The demo on the bundled slide (data/demo/CMU-1-Small-Region.svs, CC0): tile it, pretrain a tiny ViT
# with DINOv2 (configs/demo.yaml, a few minutes on 2 CPU cores), export the teacher backbone as a
# Hugging Face / timm feature extractor, and write the slide's feature bag (CLAM/TRIDENT layout).
# Run tools/setup.sh first (the README's first command does both).
set -euo pipefail
cd "$(dirname "$0")/.."
b=build
out=out/demo
mkdir -p "$out"
# Threads wait passively: the loader's workers share the cores with the compute threads.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

echo "== 1/4 tiling the slide"
"$b/dinotile" -o "$out/tiles" --tile-size 224 --mpp 0.5 --min-tissue 0.3 data/demo/CMU-1-Small-Region.svs

echo "== 2/4 pretraining (configs/demo.yaml; rerun to resume)"
"$b/dinotrain" configs/demo.yaml "$@" | tee "$out/train.log"

echo "== 3/4 exporting the teacher backbone"
"$b/dinoexport" --out "$out/export" "$out/run"

echo "== 4/4 embedding the slide's tissue tiles"
"$b/dinoembed" --model "$out/export" --slide data/demo/CMU-1-Small-Region.svs --mpp 0.5 --tile 224 \
  --min-tissue 0.3 --out "$out/CMU-1-Small-Region.h5"

if /usr/bin/python3 -c "import matplotlib" 2>/dev/null; then
  /usr/bin/python3 tools/plot_metrics.py -o "$out/metrics.png" "$out/run/training_metrics.jsonl"
fi

cat <<MSG
== done
  tiles:          $out/tiles
  training run:   $out/run  (metrics: $out/run/training_metrics.jsonl, curves: $out/metrics.png)
  checkpoints:    $out/run/checkpoints
  exported model: $out/export  (transformers.Dinov2Model.from_pretrained("$out/export"))
  feature bag:    $out/CMU-1-Small-Region.h5
MSG
# the run's verdict (docs/training.md): learned or collapsed, with the head's margin, the prototypes used
# and the teacher's RankMe against the same network at init
grep -h "verdict" "$out/train.log" | tail -n 1 | sed 's/^dinotrain: /== /' || true
