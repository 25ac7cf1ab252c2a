"""The `dlx` command: info, train, eval, and one-line errors with non-zero exits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dlx.cli import main


def test_train_then_eval(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "lenet5", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--epochs", "2",
               "--batch-size", "32", "--lr", "0.003", "--out", str(out), "--quiet", "--augment"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "device cpu, dtype float32" in text and "test accuracy" in text
    hist = json.loads((out / "history.json").read_text())
    assert hist["epoch"] == [1, 2] and len(hist["val_accuracy"]) == 2
    assert (out / "model.npz").exists()
    pytest.importorskip("matplotlib")
    assert (out / "curves.png").stat().st_size > 1000
    assert main(["eval", str(out / "model.npz"), "--data-dir", str(mnist_dir)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert (out / "confusion.png").exists()
    # resume continues from the saved epoch
    rc = main(["train", "lenet5", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--epochs", "3",
               "--batch-size", "32", "--out", str(out), "--quiet", "--resume", str(out / "model.npz")])
    assert rc == 0 and json.loads((out / "history.json").read_text())["epoch"] == [1, 2, 3]


def test_resume_applies_a_new_lr_and_says_when_there_is_nothing_to_do(mnist_dir, tmp_path, capsys):
    from dlx.serialization import read

    out = tmp_path / "run"
    ck = out / "model.npz"
    common = ["train", "lenet5", "--dataset", "mnist", "--data-dir", str(mnist_dir),
              "--batch-size", "64", "--out", str(out), "--quiet"]
    assert main(common + ["--epochs", "1", "--lr", "0.003"]) == 0
    capsys.readouterr()

    def lr_in(path):
        return read(path)[0]["optimizer"]["param_groups"][0]["lr"]

    assert main(common + ["--epochs", "2", "--resume", str(ck)]) == 0  # no --lr: keep 0.003
    assert "lr 0.003" in capsys.readouterr().out and lr_in(ck) == 0.003
    assert main(common + ["--epochs", "3", "--lr", "0.0005", "--resume", str(ck)]) == 0
    text = capsys.readouterr().out
    assert "lr now 0.0005" in text and "lr 0.0005" in text and lr_in(ck) == 0.0005
    before = ck.stat().st_mtime_ns, (out / "history.json").read_bytes()
    assert main(common + ["--epochs", "3", "--resume", str(ck)]) == 0
    text = capsys.readouterr().out
    assert "nothing to do" in text and "3 of 3 epochs" in text and "wrote" not in text
    assert (ck.stat().st_mtime_ns, (out / "history.json").read_bytes()) == before
    assert main(common + ["--epochs", "4", "--lr", "0.1", "--schedule", "cosine",
                          "--resume", str(ck)]) == 2
    assert "--lr cannot change on --resume" in capsys.readouterr().err
    assert read(ck)[0]["meta"]["epoch"] == 3


@pytest.mark.parametrize("argv, code, pattern", [
    (["train", "lenet5", "--epochs", "x"], 2, "invalid int value"),
    (["train", "resnet"], 2, "invalid choice"),
    (["train", "lenet5", "--data-dir", "/nonexistent", "--epochs", "1"], 1, "CIFAR10 not found"),
    (["eval", "/nonexistent.npz"], 1, "does not exist"),
    (["train", "lenet5", "--device", "tpu"], 1, "unknown device"),
])
def test_errors_are_one_line(argv, code, pattern, capsys):
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert pattern in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_unreadable_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    assert main(["eval", str(bad), "--dataset", "mnist"]) == 1
    assert "not a readable dlx checkpoint" in capsys.readouterr().err


def test_info_command():
    out = subprocess.run([sys.executable, "-m", "dlx.cli", "info"], capture_output=True, text=True,
                         check=True).stdout
    assert "numpy" in out and "devices" in out and "cpu" in out and "numba" in out


def test_info_with_an_unusable_default_device():
    """DLX_DEVICE=cuda on a machine without a GPU (or without CuPy): info still prints its
    diagnostics and says why the default device cannot be had."""
    import os

    env = {**os.environ, "DLX_DEVICE": "cuda"}
    code = "import sys; sys.modules['cupy'] = None; from dlx.cli import main; sys.exit(main(['info']))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("default device"))
    assert "'cuda' from DLX_DEVICE, unusable: CUDA was requested but CuPy is not installed" in line
    assert "numba" in proc.stdout and "cpu threads" in proc.stdout


def test_strict_device_without_array_api_strict_is_one_line(mnist_dir):
    code = ("import sys; sys.modules['array_api_strict'] = None; from dlx.cli import main; "
            f"sys.exit(main(['train', 'lenet5', '--dataset', 'mnist', '--data-dir', {str(mnist_dir)!r}, "
            "'--device', 'strict', '--epochs', '1']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "dlx: error: the 'strict' device needs array-api-strict, which is not installed. Fix: "
        "pip install array-api-strict (or pip install -e \".[test]\")"], proc.stderr


def test_train_with_label_smoothing_and_tta_on_cifar10(tmp_path, capsys):
    from tests.test_data import cifar_py_files, make_cifar, write_tar

    folder = tmp_path / "data" / "cifar10"
    folder.mkdir(parents=True)
    write_tar(folder / "cifar-10-python.tar.gz", cifar_py_files(*make_cifar(n_per_batch=8, n_test=12)))
    out = tmp_path / "run"
    rc = main(["train", "lenet5", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"),
               "--epochs", "1", "--batch-size", "8", "--label-smoothing", "0.1", "--tta",
               "--out", str(out), "--quiet"])
    assert rc == 0
    assert "with its mirror image (--tta)" in capsys.readouterr().out
    hist = json.loads((out / "history.json").read_text())
    assert 0 <= hist["test_accuracy_flip_tta"] <= 1
    assert main(["eval", str(out / "model.npz"), "--data-dir", str(tmp_path / "data"), "--tta",
                 "--out", str(tmp_path / "c.png")]) == 0
    text = capsys.readouterr().out
    acc = float(text.split("test accuracy ")[1].split()[0])
    assert acc == pytest.approx(hist["test_accuracy_flip_tta"], abs=1e-4)


@pytest.mark.parametrize("argv, pattern", [
    (["train", "lenet5", "--dataset", "mnist", "--tta"], "only right for cifar10"),
    (["train", "lenet5", "--label-smoothing", "1.5"], "--label-smoothing must be in [0, 1)"),
])
def test_tta_and_smoothing_errors(argv, pattern, capsys):
    assert main(argv) == 2
    assert pattern in capsys.readouterr().err


def test_a_checkpoint_for_another_data_set_says_which(mnist_dir, tmp_path, capsys):
    import dlx
    from dlx.models import LeNet5

    cifar = tmp_path / "cifar.npz"
    dlx.save(cifar, LeNet5(in_channels=3), dataset="cifar10", architecture="lenet5")
    bare = tmp_path / "bare.npz"  # no meta: the first layer's channels tell
    dlx.save(bare, LeNet5(in_channels=3))
    for ck in (cifar, bare):
        assert main(["eval", str(ck), "--dataset", "mnist", "--data-dir", str(mnist_dir)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"dlx eval: {ck} is for cifar10 (3 channels); use --dataset cifar10", err
    assert main(["train", "lenet5", "--dataset", "mnist", "--data-dir", str(mnist_dir),
                 "--resume", str(cifar), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "is for cifar10 (3 channels); use --dataset cifar10" in err and "strict" not in err


def test_resuming_from_weights_alone_says_what_to_do(mnist_dir, tmp_path, capsys):
    import dlx
    from dlx.models import LeNet5

    ck = tmp_path / "weights.npz"
    dlx.save(ck, LeNet5(in_channels=1, padding=2), dataset="mnist", architecture="lenet5")
    assert main(["train", "lenet5", "--dataset", "mnist", "--data-dir", str(mnist_dir),
                 "--resume", str(ck), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no optimizer state" in err and "without --resume" in err
    assert "optimizer=" not in err and "load without" not in err


def test_two_runs_on_one_out_folder(mnist_dir, tmp_path, capsys):
    import os
    import subprocess as sp

    from dlx.cli.common import LOCK_NAME

    out = tmp_path / "run"
    out.mkdir()
    other = sp.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live process
    try:
        (out / LOCK_NAME).write_text(f"{other.pid}\n")
        argv = ["train", "lenet5", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--epochs", "1",
                "--batch-size", "64", "--out", str(out), "--quiet"]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"dlx train: another run (process {other.pid}) is writing to {out}"), err
        assert len(err.splitlines()) == 1 and not (out / "model.npz").exists()
    finally:
        other.kill()
        other.wait()
    (out / LOCK_NAME).write_text(f"{other.pid}\n")  # its process is gone: a stale lock, taken over
    assert main(argv) == 0 and (out / "model.npz").exists()
    assert not (out / LOCK_NAME).exists() and os.listdir(out)  # removed at the end


def test_train_help_shows_defaults_and_unknown_options_point_to_it(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: 10)", "(default: 128)", "(default: adam)", "(default: 256,128)",
                  "no per-epoch lines"):
        assert shown in text, shown
    assert main(["train", "lenet5", "--epohcs", "3"]) == 2
    assert capsys.readouterr().err.strip() == ("dlx train: unrecognized arguments: --epohcs 3 "
                                               "(see dlx train --help)")
    assert main(["train", "mlp", "--hidden", "64,x"]) == 2
    assert "--hidden takes positive layer sizes" in capsys.readouterr().err


def test_train_and_eval_an_mlp(mnist_dir, tmp_path, capsys):
    from dlx.serialization import read_header

    out = tmp_path / "mlp"
    assert main(["train", "mlp", "--hidden", "32,16", "--dataset", "mnist", "--data-dir", str(mnist_dir),
                 "--epochs", "1", "--batch-size", "32", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "training mlp on mnist" in text and "after 1 epoch (" in text  # singular
    assert "epoch 1/1" not in text + capsys.readouterr().err  # --quiet: no per-epoch lines
    layers = read_header(out / "model.npz")["layers"]
    assert layers["1.0.weight"]["shape"] == [32, 784] and layers["1.4.weight"]["shape"] == [10, 16]
    assert main(["eval", str(out / "model.npz"), "--data-dir", str(mnist_dir), "--out",
                 str(tmp_path / "c.png")]) == 0
    assert "test accuracy" in capsys.readouterr().out


def test_memory_error_is_one_line(monkeypatch, capsys):
    from dlx.cli import info

    def oom(args):
        raise MemoryError("Unable to allocate 8.00 GiB for an array with shape (8000, 8000, 4, 4)")

    monkeypatch.setattr(info, "run", oom)
    assert main(["info"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("dlx: error: out of memory: Unable to allocate 8.00 GiB for an array"), err


def test_dlx_gan_refuses_an_out_folder_another_run_writes_to(mnist_dir, tmp_path, capsys):
    import subprocess as sp

    from dlx.cli.common import LOCK_NAME

    out = tmp_path / "gan"
    out.mkdir()
    other = sp.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(f"{other.pid}\n")
        argv = ["gan", "--data-dir", str(mnist_dir), "--epochs", "1", "--batch-size", "16",
                "--limit", "32", "--channels", "4", "--out", str(out), "--quiet"]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"dlx gan: another run (process {other.pid}) is writing to {out}"), err
        assert not (out / "scores.json").exists()
    finally:
        other.kill()
        other.wait()
    assert main(argv) == 0 and (out / "scores.json").exists() and not (out / LOCK_NAME).exists()


def test_train_a_convnet_and_use_it_as_the_gan_judge(mnist_dir, tmp_path, capsys):
    """dlx train convnet (the judge's architecture), then dlx gan --classifier with it."""
    out = tmp_path / "judge"
    assert main(["train", "convnet", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--epochs", "1",
                 "--batch-size", "32", "--out", str(out), "--quiet"]) == 0
    assert main(["eval", str(out / "model.npz"), "--dataset", "mnist", "--data-dir", str(mnist_dir)]) == 0
    assert main(["gan", "--epochs", "1", "--batch-size", "16", "--limit", "32", "--channels", "4",
                 "--data-dir", str(mnist_dir), "--out", str(tmp_path / "gan"), "--quiet",
                 "--classifier", str(out / "model.npz"), "--num-eval", "20"]) == 0
    assert "IS" in capsys.readouterr().out


def test_train_graph_flag_runs_the_same_step_on_the_cpu(mnist_dir, tmp_path):
    """--graph captures the step on cuda; on the cpu the compiled step runs eagerly, so the
    run is the one without the flag, bit for bit."""
    hists = []
    for flag in ("--graph", "--no-graph"):
        out = tmp_path / flag.strip("-")
        assert main(["train", "lenet5", "--dataset", "mnist", "--data-dir", str(mnist_dir),
                     "--epochs", "1", "--batch-size", "32", "--out", str(out), "--quiet", flag]) == 0
        hists.append(json.loads((out / "history.json").read_text()))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert hists[0][key] == hists[1][key]
