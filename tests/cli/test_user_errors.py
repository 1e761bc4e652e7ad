"""No tracebacks for user errors: every bad flag and bad file gets one line naming it and
what to do; the unsafe-pickle refusal never suggests turning safety off; outputs never
overwrite inputs."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
import torch

from dlrm.cli import main
from dlrm.training.checkpoint import CheckpointError, load

TINY = ["--preset", "tiny", "--train-samples", "4096", "--val-samples", "2048",
        "--batch-size", "128", "--max-samples", "1280", "--threads", "1", "--quiet"]


class NotAllowed:
    """Pickled by reference to this module: ``weights_only`` loading refuses it."""

    def __reduce__(self):
        return (print, ("this would have run",))


def one_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("errors") / "run"
    assert main(["train", *TINY, "--out", str(path)]) == 0
    return path


def bad_files(folder) -> dict[str, str]:
    """Checkpoint files that are wrong in every way a file can be, and what the error says."""
    folder.mkdir(exist_ok=True)
    (folder / "random.pt").write_bytes(random.Random(0).randbytes(4096))
    (folder / "empty.pt").write_bytes(b"")
    (folder / "text.pt").write_text("hello\n")
    torch.save({"format": "dlrm-checkpoint-v1", "payload": NotAllowed()}, folder / "unsafe.pt")
    torch.save({"weights": torch.zeros(3)}, folder / "foreign.pt")
    return {"random.pt": "not a checkpoint (unreadable", "empty.pt": "the file is empty",
            "text.pt": "not a checkpoint (unreadable",
            "unsafe.pt": "refused: it holds Python objects that would run code",
            "foreign.pt": "not a dlrm checkpoint"}


def test_bad_checkpoint_files_are_one_line_naming_the_file(run, tmp_path, capsys):
    for name, message in bad_files(tmp_path / "bad").items():
        path = tmp_path / "bad" / name
        with pytest.raises(CheckpointError) as err:
            load(path)
        assert str(path) in str(err.value) and message in str(err.value)
        assert "weights_only" not in str(err.value)  # never suggests loading unsafely
        capsys.readouterr()
        assert main(["eval", "--checkpoint", str(path)]) == 2
        one_line(capsys, str(path), message)
        assert main(["quantize", "--checkpoint", str(path), "--out",
                     str(tmp_path / "q.pt")]) == 2
        one_line(capsys, str(path))


def test_bad_files_in_a_run_directory_given_to_resume(run, tmp_path, capsys):
    import shutil

    messages = bad_files(tmp_path / "bad")
    for name, message in messages.items():
        victim = tmp_path / f"run-{name}"
        shutil.copytree(run, victim)
        (victim / "summary.json").unlink()  # an unfinished run: resume reads last.pt
        shutil.copy(tmp_path / "bad" / name, victim / "last.pt")
        assert main(["train", "--resume", str(victim)]) == 2
        one_line(capsys, str(victim / "last.pt"), message)
    # A quantized checkpoint in place of last.pt: inference only.
    victim = tmp_path / "run-quantized"
    shutil.copytree(run, victim)
    (victim / "summary.json").unlink()
    assert main(["quantize", "--checkpoint", str(run / "last.pt"), "--out",
                 str(tmp_path / "q8.pt")]) == 0
    shutil.copy(tmp_path / "q8.pt", victim / "last.pt")
    capsys.readouterr()
    assert main(["train", "--resume", str(victim)]) == 2
    one_line(capsys, "cannot be used to resume its run", "quantized checkpoint is for inference")
    # A damaged config.json; a file given as the run; a folder that is not a run.
    victim = tmp_path / "run-config"
    shutil.copytree(run, victim)
    (victim / "config.json").write_text('{"model_kind": "dlrm", "trai')
    assert main(["train", "--resume", str(victim)]) == 2
    one_line(capsys, f"{victim / 'config.json'}: not valid JSON (line 1")
    assert main(["train", "--resume", str(run / "last.pt")]) == 2
    one_line(capsys, "expected a run directory", "not a file")
    assert main(["train", "--resume", str(tmp_path)]) == 2
    one_line(capsys, f"--resume {tmp_path}: not a run directory (no config.json)")


def test_bad_flags_are_one_line(run, tmp_path, capsys):
    ckpt = str(run / "last.pt")
    assert main(["eval", "--checkpoint", ckpt, "--split", "bogus"]) == 2
    one_line(capsys, "split 'bogus': the data has train, val, test")
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    one_line(capsys, "missing.pt does not exist")
    assert main(["eval", "--checkpoint", ckpt, "--eval-batch-size", "0"]) == 2
    one_line(capsys, "--eval-batch-size 0: must be at least 1")
    assert main(["train", *TINY, "--tables", "10,x", "--out", str(tmp_path / "r")]) == 2
    one_line(capsys, "--tables '10,x': expected sizes like")
    assert main(["train", *TINY, "--nproc", "0", "--out", str(tmp_path / "r")]) == 2
    one_line(capsys, "--nproc 0: must be at least 1")
    assert main(["plan", "--nproc", "0"]) == 2
    one_line(capsys, "--nproc 0: must be at least 1")
    (tmp_path / "file").write_text("x")
    assert main(["train", *TINY, "--out", str(tmp_path / "file")]) == 2
    one_line(capsys, f"{tmp_path / 'file'} is a file")


def test_a_user_error_through_the_real_command_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dlrm", "train", "--lr", "nan", "--quiet",
                           "--out", str(tmp_path / "r")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == \
        "dlrm train: error: --lr nan: must be a finite number above 0"
    assert "Traceback" not in proc.stderr


def test_outputs_never_overwrite_inputs(run, tmp_path, capsys):
    ckpt = run / "last.pt"
    original = ckpt.read_bytes()
    for command in ("quantize", "export"):
        assert main([command, "--checkpoint", str(ckpt), "--out", str(ckpt)]) == 2
        one_line(capsys, f"--out {ckpt} is the input {ckpt}")
        assert main([command, str(ckpt), str(ckpt)]) == 2  # the old spelling too
        capsys.readouterr()
        assert ckpt.read_bytes() == original
    link = tmp_path / "link.pt"
    link.symlink_to(ckpt)
    assert main(["quantize", "--checkpoint", str(ckpt), "--out", str(link)]) == 2
    one_line(capsys, "is the input")
    out = tmp_path / "q.pt"
    assert main(["quantize", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert main(["quantize", "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    one_line(capsys, f"--out {out} already exists", "--overwrite")
    assert main(["quantize", "--checkpoint", str(ckpt), "--out", str(out), "--overwrite"]) == 0
    assert main(["quantize", str(ckpt), str(tmp_path / "legacy.pt")]) == 0
    assert "positional CHECKPOINT OUTPUT is deprecated" in capsys.readouterr().err
    assert ckpt.read_bytes() == original
    # A run directory is never the data it reads.
    data = tmp_path / "data"
    data.mkdir()
    assert main(["train", "--data", str(data), "--out", str(data)]) == 2
    one_line(capsys, f"--out {data} is the input {data}")


def test_compare_never_writes_into_a_used_folder(tmp_path, capsys):
    used = tmp_path / "cmp"
    used.mkdir()
    (used / "results.md").write_text("an earlier comparison")
    assert main(["compare", "--models", "lr", "--out", str(used), "--quiet"]) == 2
    one_line(capsys, f"--out {used} is not empty")
    assert (used / "results.md").read_text() == "an earlier comparison"
