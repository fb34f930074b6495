"""What the volume bundle families share: reading volumes into MONAI's channel-first (C, I, J, K) layout."""

from __future__ import annotations

VOLUME_READER = "$visionfm_core.data.io.volumes.EyeVolumeReader()"
# inference on a folder: NIfTI files, multi-frame DICOM files and folders of DICOM slices (one series each)
VOLUME_DATALIST = "$visionfm_core.data.volume_datalist(@dataset_dir)"

# validation of the label-map families: softmax output and labels one-hot, mean Dice over the foreground classes
ONE_HOT = {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False],
           "to_onehot": ["@num_classes", "@num_classes"]}
MEAN_DICE = {"_target_": "MeanDice", "include_background": False,
             "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}


def load_volume(keys="image", allow_missing: bool = False, validate: dict | None = None) -> list[dict]:
    """Files (NIfTI, DICOM series folder, multi-frame DICOM) -> (C, I, J, K) with affine and spacing in the metadata;
    values as stored (intensity scaling is the family's choice; label maps keep their values). The image (`validate`
    given: ValidateVolumed's arguments, e.g. expected_spacing, min_slices) is checked on its raw values: NaN,
    constant, too few slices stop with the file named; a spacing far from the training spacing is a warning."""
    load = {"_target_": "LoadImaged", "keys": keys, "reader": VOLUME_READER, "image_only": True,
            "ensure_channel_first": True}
    if allow_missing:
        load["allow_missing_keys"] = True
    if validate is None:
        return [load]
    return [load, {"_target_": "visionfm_core.data.ValidateVolumed", "keys": "image", **validate}]
