#!/bin/sh
# Optional: a virtual environment on top of Debian's torch 1.13 with transformers and timm, so that
# tests/test_export.c also loads the exports with the real libraries (it uses the reference ViT only
# otherwise). Needs network access to the Python package index.
#   tests/make_hf_venv.sh [DIR]    (default /tmp/hfvenv), then
#   DINO_TEST_PYTHON=DIR/bin/python ctest --test-dir build -R export
# transformers 4.48.3 is the newest checked with torch 1.13 that has Dinov2WithRegistersModel;
# timm >= 1.0.20 loads "local-dir:" directories (its torchvision need is met by Debian's 0.14).
set -e
DIR=${1:-/tmp/hfvenv}
/usr/bin/python3 -m venv --system-site-packages "$DIR"
"$DIR/bin/pip" install "transformers==4.48.3"
"$DIR/bin/pip" install --no-deps "timm>=1.0.20"
"$DIR/bin/python" -c "import transformers, timm; print('transformers', transformers.__version__, 'timm', timm.__version__)"
