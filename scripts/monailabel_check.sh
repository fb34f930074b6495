#!/usr/bin/env bash
# End-to-end check of apps/monailabel on a real MONAI Label 0.8.5 server, offline, on CPU:
# environment (setup_monailabel.sh), fresh weights in a temporary copy of the bundles, a server on 127.0.0.1 on a
# free port, real inputs (skimage's retina photo, nilearn's MNI152 template) to every family, bad inputs (each
# rejected upload deleted), one training round through /train; the server is stopped by its process id on exit.
# Prints PASS/FAIL per check and exits non-zero on any failure.
#   KEEP=1 scripts/monailabel_check.sh    keeps the temporary folder (logs, served bundles) for a look
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
start=$(date +%s)

scripts/setup_monailabel.sh
VENV=$(cd "${MONAILABEL_VENV:-.venv-monailabel}" && pwd)
PY=$VENV/bin/python

MODELS=fundus_vessel_segmentation,fundus_dr_classification,fundus_landmark_detection
MODELS=$MODELS,mri_orbit_segmentation,fundus_ibot_pretraining
# the same config overrides for the server and the weights: the 2 mm template is served at 2 mm (the bundle's
# default resamples it to 1 mm: 8x the voxels, minutes of CPU), on the default ViT-B. JSON without spaces:
# the `monailabel` launcher splits its arguments on spaces.
OVERRIDES='{"mri_orbit_segmentation":{"pixdim":[2.0,2.0,2.0]}}'

WORK=$(mktemp -d /tmp/monailabel_check.XXXXXX)
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
  fi
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# offline: nothing may be downloaded (the app never asks the model zoo; these make any attempt fail fast)
export HF_HUB_OFFLINE=1 NO_PROXY='*' no_proxy='*' MPLCONFIGDIR=$WORK/mpl
export PATH=$VENV/bin:$PATH MONAILABEL_PYEXE=$PY TMPDIR=$WORK

nice -n 10 "$PY" apps/monailabel/check.py prepare "$WORK" --models "$MODELS" --overrides "$OVERRIDES"
# a copy of the app, so the server's model/ links and datastore files stay out of the checkout
cp -r apps/monailabel "$WORK/app"
rm -rf "$WORK/app/model"

PORT=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
URL=http://127.0.0.1:$PORT
# the server's own temporary folder: the check counts what rejected uploads leave there (they must leave nothing)
mkdir -p "$WORK/server_tmp"
TMPDIR=$WORK/server_tmp nice -n 10 monailabel start_server --app "$WORK/app" --studies "$WORK/studies" \
  --conf bundles_dir "$WORK/bundles" --conf models "$MODELS" --conf overrides "$OVERRIDES" \
  --conf zoo_source local --conf sam2 false --host 127.0.0.1 --port "$PORT" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for i in $(seq 150); do
  if curl -sf -m 5 "$URL/info/" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "FAIL  server exited; its log:"; tail -30 "$WORK/server.log"; exit 1
  fi
  sleep 2
done
if ! curl -sf -m 5 "$URL/info/" >/dev/null; then
  echo "FAIL  server not up after 300 s"; tail -30 "$WORK/server.log"; exit 1
fi
echo "server up on $URL (pid $SERVER_PID) after $(( $(date +%s) - start )) s"

status=0
nice -n 5 "$PY" apps/monailabel/check.py run "$WORK" --url "$URL" --models "$MODELS" --overrides "$OVERRIDES" \
  --server_tmp "$WORK/server_tmp" || status=$?
if [ "$status" != 0 ]; then
  echo "server log (last lines):"; grep -v -e "\[INFO\]" -e " - INFO - " "$WORK/server.log" | tail -25
fi
echo "monailabel_check: $([ "$status" = 0 ] && echo PASS || echo FAIL) in $(( $(date +%s) - start )) s"
exit "$status"
