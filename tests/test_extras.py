"""A missing optional extra: one error, of both types the features raised before, naming the
extra to install; a present one is simply imported."""

import pytest

from dlrm.cli import main
from dlrm.extras import MissingExtraError, require


def test_a_missing_extra_names_what_to_install():
    with pytest.raises(MissingExtraError) as caught:
        require("dlrm_no_such_module", "dlrm frobnicate", "frob", "frob-lib")
    assert str(caught.value) == ("dlrm frobnicate needs the optional extra: "
                                 "pip install 'dlrm[frob]' (frob-lib)")
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, RuntimeError)
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)
    import json

    assert require("json", "anything", "none") is json


def test_the_cli_prints_one_line_for_a_missing_extra(monkeypatch, capsys, tmp_path):
    """`dlrm train --tensorboard` without tensorboard: exit 2 and the install line."""
    import dlrm.training.tensorboard as tensorboard

    monkeypatch.setattr(tensorboard, "require", lambda *a: require("dlrm_no_such_module",
                                                                   "--tensorboard",
                                                                   "tensorboard"))
    rc = main(["train", "--preset", "tiny", "--train-samples", "256", "--val-samples", "64",
               "--quiet", "--out", str(tmp_path / "run"), "--tensorboard", str(tmp_path / "tb")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--tensorboard needs the optional extra: pip install 'dlrm[tensorboard]'" in err
    assert "Traceback" not in err
