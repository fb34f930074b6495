import json

import pytest

from visionfm_core.tools.cli import main
from visionfm_core.data import write_demo_dataset


def test_prepare_data_retfound(tmp_path, capsys):
    write_demo_dataset(tmp_path / "ds", per_class=2, size=32)
    (tmp_path / "ds" / "datalist.json").unlink()
    out = tmp_path / "out" / "datalist.json"
    main(["prepare-data", "retfound", str(tmp_path / "ds"), "--out", str(out)])
    datalist = json.loads(out.read_text())
    assert len(datalist["training"]) == 10 and len(datalist["validation"]) == 10
    assert datalist["class_names"] == ["0", "1", "2", "3", "4"]
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(Exception, match="missing_root"):
        main(["prepare-data", "retfound", str(tmp_path / "missing_root"), "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_modalities_listing(capsys):
    main(["modalities"])
    out = capsys.readouterr().out
    assert out.count("\n") == 8 and "SlitLamp" in out and "0.423737496137619" in out
