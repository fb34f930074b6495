#!/usr/bin/env bash
# Create .venv-monailabel: a MONAI Label 0.8.5 server environment, CPU-only, that serves this collection's bundles
# (apps/monailabel). Safe to run again: it installs only what is missing or at another version.
#
# Why each pin (details: apps/monailabel/README.md):
#   torch 2.13.0 CPU wheel first, and no torchvision: PyPI's torchvision would pull a multi-GB CUDA torch, and does
#     not load beside the CPU wheel; the app ships a placeholder torchvision.utils for monailabel's import.
#   monailabel 0.8.5 with --no-deps: it requires sam2 (and through it torchvision) on Python >= 3.10; its other
#     requirements are installed by name below (the app has no SAM2 models).
#   monai 1.6.1 (what visionfm-core is built against); the app fixes 1.6's Spacingd failure on `image_path`.
#   pytorch-ignite 0.5.5 (the bundles need >= 0.5; monai[ignite] would pin 0.4.11), numpy < 2 (pydicom-seg and
#   numpymaxflow), pydicom 2.4.4 + dicomweb-client 0.59.1 + pynetdicom 2.0.2 (monailabel 0.8.5 fails with pydicom 3).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MONAILABEL_VENV:-.venv-monailabel}  # another folder: for a fresh-install test
PY=$VENV/bin/python
start=$(date +%s)

TORCH="torch==2.13.0"
MONAILABEL="monailabel==0.8.5"
PINS=(
  "monai==1.6.1" "pytorch-ignite==0.5.5" "numpy==1.26.4"
  "pydicom==2.4.4" "dicomweb-client[gcp]==0.59.1" "pynetdicom==2.0.2" "itk==5.4.7"
  # monailabel 0.8.5's own requirements, minus sam2 (and monai's torchvision extra)
  "uvicorn==0.55.0" "fastapi==0.165.0" "pydantic==2.14.4" "pydantic-settings==2.16.3" "python-dotenv==1.2.4"
  "python-multipart==0.0.34" "httpx==0.29.0" "schedule==1.2.2" "timeloop==1.0.2" "expiringdict==1.2.2"
  "expiring_dict==1.1.2" "cachetools==8.0.2" "watchdog==7.1.0" "pydicom-seg==0.4.1" "pynrrd==1.1.3"
  "numpymaxflow==0.0.7" "girder-client==5.0.21" "ninja==1.13.2" "einops==0.8.2" "pyyaml==6.0.4" "filelock==4.3.2"
  "passlib==1.7.4" "pyjwt==2.15.1" "bcrypt==5.0.0" "shapely==2.2.0" "requests==2.34.2" "requests-toolbelt==1.0.0"
  "urllib3==2.8.0" "scikit-learn==1.9.1" "scipy==1.17.1" "google-auth==2.63.0"
  # monai extras monailabel uses, and visionfm-core's install_requires (setup.cfg)
  "nibabel==5.4.2" "pillow==13.0.0" "psutil==7.2.2" "scikit-image==0.26.0" "tensorboard==2.21.0" "tqdm==4.70.1"
  "fire==0.7.1"
  # the real MRI volume of scripts/monailabel_check.sh (nilearn's MNI152 template, inside the wheel)
  "nilearn==0.14.1"
)

pip() {  # pip, minus this machine's noisy "location is ignored" warnings; still fails when pip fails
  local log status=0
  log=$(mktemp)
  nice -n 10 "$PY" -m pip "$@" >"$log" 2>&1 || status=$?
  grep -v -e "is ignored" -e "requires sam2" -e "dependency resolver does not currently" "$log" || true
  rm -f "$log"
  return "$status"
}

installed() {  # all pins present at their versions, visionfm-core importable from this checkout
  "$PY" - "$TORCH" "$MONAILABEL" "${PINS[@]}" <<'EOF' 2>/dev/null
import re, sys
from importlib.metadata import version
for pin in sys.argv[1:]:
    name, want = re.sub(r"\[.*\]", "", pin).split("==")
    if version(name).split("+")[0] != want:
        sys.exit(1)
import visionfm_core  # noqa: F401 (editable install of this checkout)
EOF
}

[ -x "$PY" ] || "${PYTHON:-python3}" -m venv "$VENV"
if installed; then
  echo "$VENV: already installed"
else
  # torch before anything else, so nothing later can pull a CUDA build onto a CPU machine
  pip install -q "$TORCH"
  constraints=$(mktemp)
  echo "$TORCH" >"$constraints"
  pip install -q --no-deps "$MONAILABEL"
  pip install -q -c "$constraints" "${PINS[@]}"
  # this checkout's visionfm-core, editable; its requirements are among the pins above
  pip install -q --no-deps -e .
  rm -f "$constraints"
  installed || { echo "setup_monailabel: the environment does not match the pins" >&2; exit 1; }
  echo "$VENV: installed in $(( $(date +%s) - start )) s, $(du -sh "$VENV" | cut -f1)"
fi
"$PY" - <<'EOF'
from importlib.metadata import version
names = ["monailabel", "monai", "torch", "pytorch-ignite", "numpy", "pydicom", "itk", "visionfm-core"]
print("versions: " + ", ".join(f"{n} {version(n)}" for n in names))
EOF
