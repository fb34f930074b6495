"""Bundle generation: one description per task family, rendered into `bundles/<modality>_<target>_<task>/`.

`common.py` holds what every family shares (JSON formatting, metadata, config blocks, wording); each family
module (`pretraining.py`, `classification.py`, `segmentation.py`, `landmarks.py`) exposes `BUNDLES`, a dict
{bundle folder name: {relative path: file text}} built from its description. `scripts/generate_bundles.py`
writes them or checks that the committed files match.
"""
