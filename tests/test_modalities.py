import pytest

from visionfm_core import MODALITIES, get_modality


def test_eight_modalities_with_reference_normalisation():
    assert list(MODALITIES) == ["Fundus", "OCT", "FFA", "SlitLamp", "External", "Ultrasound", "UBM", "MRI"]
    fundus = get_modality("Fundus")
    assert fundus.mean == (0.423737496137619, 0.2609460651874542, 0.128403902053833)
    assert fundus.std == (0.29482534527778625, 0.20167365670204163, 0.13668020069599152)
    assert get_modality("UBM").mean == (0.096110865,) * 3
    assert get_modality("MRI").std == (0.16198656,) * 3
    assert all(len(m.mean) == 3 and len(m.std) == 3 for m in MODALITIES.values())


@pytest.mark.parametrize(
    "alias, name",
    [("fundus", "Fundus"), ("CFP", "Fundus"), ("Silt-Lamp", "SlitLamp"), ("slit_lamp", "SlitLamp"),
     ("SLIT LAMP", "SlitLamp"), ("UltraSound", "Ultrasound"), ("bscan", "Ultrasound"), ("oct", "OCT"),
     ("ffa", "FFA"), ("external_eye", "External"), ("ubm", "UBM"), ("mri", "MRI")],
)
def test_aliases(alias, name):
    assert get_modality(alias).name == name


def test_unknown_modality_lists_valid_names():
    with pytest.raises(ValueError, match="Unknown modality 'xray'.*Fundus, OCT, FFA, SlitLamp"):
        get_modality("xray")
