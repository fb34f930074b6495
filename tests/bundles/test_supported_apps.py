"""metadata.json's `supported_apps`, in the form model-zoo's verifier reads it ({app: version}): the MONAI Label
release apps/monailabel is set up with, exactly for the bundles that app serves; {} for the others."""

import re
import sys

from bundle_harness import BUNDLES, REPO, metadata

sys.path.insert(0, str(REPO / "apps" / "monailabel"))
from visionfm_label import bundles as B  # noqa: E402


def monai_label_release() -> str:
    """The monailabel version scripts/setup_monailabel.sh installs (the one the app and its check run on)."""
    return re.search(r'MONAILABEL="monailabel==([0-9.]+)"', (REPO / "scripts" / "setup_monailabel.sh").read_text())[1]


def test_supported_apps_name_monai_label_for_the_bundles_the_app_serves():
    release, served = monai_label_release(), []
    for bundle in BUNDLES:
        meta = metadata(bundle)
        try:
            B.bundle_info(bundle)  # the app's own decision (a generation bundle is refused)
            listed = True
        except B.BundleError:
            listed = False
        # MONAI Label uploads one file per request: a network with a second input cannot be served from it
        single_input = set(meta["network_data_format"]["inputs"]) == {"image"}
        expected = {"monai-label": release} if listed and single_input else {}
        assert meta["supported_apps"] == expected, bundle.name
        served += [bundle.name] if expected else []
    assert len(served) == 24 and "fundus_vessel_segmentation" in served and "fundus_ibot_pretraining" in served
    assert "multimodal_disease_classification" not in served and "fundus_ldm_generation" not in served
