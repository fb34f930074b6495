"""MONAI Label app that serves the VisionFM-for-MONAI bundles from a local folder (monailabel 0.8.5).

    monailabel start_server --app apps/monailabel --studies <images> \
        [--conf bundles_dir <dir>] [--conf models a,b|all] --host 127.0.0.1 --port 8000

See README.md next to this file for what each bundle family returns, and the known limits.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Dict

_APP_DIR = Path(__file__).resolve().parent
if str(_APP_DIR) not in sys.path:
    sys.path.insert(0, str(_APP_DIR))  # the visionfm_label package next to this file


def _torchvision_or_placeholder() -> str:
    """monailabel imports torchvision.utils at load; use the placeholder only when no torchvision works."""
    try:
        import torchvision.utils  # noqa: F401

        return "torchvision"
    except Exception:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.path.insert(0, str(_APP_DIR / "placeholders"))
        return "placeholder"


TORCHVISION = _torchvision_or_placeholder()

import monailabel  # noqa: E402
from fastapi import HTTPException  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.exception import MONAILabelException  # noqa: E402
from monailabel.interfaces.tasks.infer_v2 import InferTask  # noqa: E402
from monailabel.interfaces.tasks.train import TrainTask  # noqa: E402
from monailabel.utils.others.generic import strtobool  # noqa: E402
from visionfm_core.encoders import WeightsError  # noqa: E402

from visionfm_label.bundles import (BundleError, bundle_info, discover, link_into_app, overrides_for,  # noqa: E402
                                    parse_overrides, select)
from visionfm_label.infer import InputError, VisionFMInferTask  # noqa: E402
from visionfm_label.train import VisionFMTrainTask  # noqa: E402
from visionfm_label.uploads import delete_after_request  # noqa: E402
from visionfm_label.uploads import install as delete_uploads_whatever_the_answer  # noqa: E402

logger = logging.getLogger(__name__)
DEFAULT_BUNDLES_DIR = _APP_DIR.parent.parent / "bundles"


class VisionFMApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        conf = dict(conf or {})
        delete_uploads_whatever_the_answer()  # MONAI Label keeps the uploads of error answers (uploads.py)
        # accepted for the stock monaibundle command line; this app never downloads (zoo) and has no SAM2 model
        for key in ("zoo_source", "sam2"):
            conf.pop(key, None)
        bundles_dir = Path(conf.get("bundles_dir") or DEFAULT_BUNDLES_DIR).expanduser().resolve()
        chosen = select(discover(bundles_dir), conf.get("models", "all"))
        self.overrides = parse_overrides(conf.get("overrides"))
        self.bundles = {}
        for name, path in link_into_app(app_dir, chosen).items():
            try:
                self.bundles[name] = bundle_info(path)
            except BundleError as e:
                logger.warning(f"Not serving {name}: {e}")
        logger.info(f"VisionFM bundles from {bundles_dir}: {', '.join(self.bundles) or 'none'} "
                     f"(torchvision: {TORCHVISION})")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"VisionFM bundles ({monailabel.__version__})",
            description="VisionFM-for-MONAI bundles: segmentation, classification, landmarks and embeddings",
            version=monailabel.__version__,
        )

    def init_infers(self) -> Dict[str, InferTask]:
        infers: Dict[str, InferTask] = {}
        for name, info in self.bundles.items():
            try:
                task = VisionFMInferTask(info, self.conf, overrides_for(self.overrides, name))
            except Exception as e:  # one broken bundle must not keep the others from being served
                logger.warning(f"Not serving {name}: {type(e).__name__}: {e}")
                continue
            if task.is_valid():
                infers[name] = task
            else:
                logger.warning(f"Not serving {name}: models/{info.weights} is missing")
        return infers

    def init_trainers(self) -> Dict[str, TrainTask]:
        trainers: Dict[str, TrainTask] = {}
        if strtobool(self.conf.get("skip_trainers", "false")):
            return trainers
        for name, info in self.bundles.items():
            if info.trainable:
                task = VisionFMTrainTask(str(info.path), self.conf, overrides_for(self.overrides, name))
                if task.is_valid():
                    trainers[name] = task
        return trainers

    def infer(self, request, datastore=None):
        """MONAI Label turns any exception into a bare HTTP 500; say what went wrong instead. The upload and the
        result file are deleted whatever the answer (visionfm_label.uploads)."""
        model = request.get("model")
        if model not in self._infers:
            raise HTTPException(status_code=404, detail=f"unknown bundle {model!r}; served: "
                                                        f"{', '.join(sorted(self._infers)) or 'none'}")
        try:
            result = super().infer(request, datastore)
        except InputError as e:
            raise HTTPException(status_code=422, detail=str(e)) from e
        except WeightsError as e:
            raise HTTPException(status_code=500, detail=f"{model}: {e}") from e
        except MONAILabelException as e:
            raise HTTPException(status_code=500, detail=f"{model}: {e.msg}") from e
        except Exception as e:
            logger.exception(f"infer {model} failed")
            raise HTTPException(status_code=500, detail=f"{model}: {type(e).__name__}: {e}") from e
        # the mask file our writer made: also when the endpoint fails after this (e.g. output=dicom_seg)
        delete_after_request(result.get("file"))
        return result
