"""The scripts in examples/ and benchmarks/ that produce recorded figures run end to end on
tiny data sets in the official formats."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name, folder="examples"):
    spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mnist_mlp_example(mnist_dir, tmp_path, capsys):
    out = tmp_path / "mlp"
    rc = _load("mnist_mlp").main(["--hidden", "16", "8", "--dropout", "0.1", "--epochs", "2",
                                  "--batch-size", "32", "--data-dir", str(mnist_dir),
                                  "--out", str(out), "--quiet"])
    assert rc == 0 and "test accuracy" in capsys.readouterr().out
    hist = json.loads((out / "history.json").read_text())
    assert hist["sizes"] == [784, 16, 8, 10] and len(hist["val_accuracy"]) == 2
    assert (out / "model.npz").exists()


def test_optimizer_comparison_example(mnist_dir, tmp_path):
    out = tmp_path / "opt"
    rc = _load("optimizer_comparison").main(["--epochs", "1", "--limit", "64", "--batch-size", "16",
                                             "--every", "2", "--data-dir", str(mnist_dir),
                                             "--out", str(out)])
    assert rc == 0
    runs = json.loads((out / "optimizers.json").read_text())["runs"]
    assert len(runs) == 5 and all(len(r["loss"]) == 2 for r in runs.values())


def test_demos_reach_their_figures(tmp_path, capsys):
    """The write-ups' demos (moons, circle, gates, regression, sine) at their default size."""
    import pytest

    pytest.importorskip("matplotlib")
    out = tmp_path / "demos"
    assert _load("demos").main(["--out", str(out)]) == 0
    res = json.loads((out / "demos.json").read_text())
    assert res["moons"]["test_accuracy"] >= 0.97
    assert res["circle"]["test_accuracy"] >= 0.96
    assert all(g["correct"] for g in res["gates"].values())
    assert abs(res["regression"]["linear"]["weight"] - 2) < 0.1
    assert abs(res["regression"]["logistic"]["slope"] - 4) < 1.0
    assert res["sine"]["max_abs_error"] < 0.05
    assert {p.name for p in out.glob("*.png")} == {f"{d}.png" for d in res}


def test_gan_score_breakdown_example(mnist_dir, tmp_path, capsys):
    import dlx
    from dlx.cli.gan_score import figures as breakdown  # the one the example and dlx gan score use
    from dlx.models import DCGANGenerator, LeNet5

    mod = _load("gan_score_breakdown")
    certain = breakdown(np.tile(np.eye(10), (3, 1)))  # every class, each read with certainty
    assert certain["inception_score"] == pytest.approx(10.0)
    assert certain["mean_prediction_entropy"] == pytest.approx(0.0, abs=1e-12)
    assert certain["confidence_below_0.9"] == 0.0
    unsure = breakdown(np.full((4, 10), 0.1))  # nothing can be read
    assert unsure["inception_score"] == pytest.approx(1.0)
    assert unsure["confidence_below_0.9"] == 1.0
    one_class = breakdown(np.tile(np.eye(10)[3], (5, 1)))
    assert one_class["inception_score"] == pytest.approx(1.0) and one_class["class_frequencies"][3] == 1

    gen, clf = tmp_path / "g.npz", tmp_path / "c.npz"
    dlx.save(gen, DCGANGenerator(channels=4), architecture="dcgan", latent_dim=100,
             args={"channels": 4})
    dlx.save(clf, LeNet5(in_channels=1, padding=2), dataset="mnist")
    out = tmp_path / "b.json"
    assert mod.main([str(gen), "--classifier", str(clf), "--data-dir", str(mnist_dir),
                     "--num", "32", "--json", str(out)]) == 0
    assert "real test digits" in capsys.readouterr().out
    figures = json.loads(out.read_text())
    for name in ("real test digits", "generator"):
        r = figures[name]
        assert r["inception_score"] == pytest.approx(
            np.exp(r["class_entropy"] - r["mean_prediction_entropy"]))
        assert sum(r["class_frequencies"]) == pytest.approx(1.0, abs=1e-3)


def test_drift_run_nudges_weights_and_compare_reports_gaps(mnist_dir, tmp_path, monkeypatch, capsys):
    import dlx
    from dlx import models

    drift = _load("float32_drift", "benchmarks")
    # the patches `run` makes to the model classes are undone after the test
    monkeypatch.setattr(models, "LeNet5", models.LeNet5)
    monkeypatch.setattr(models, "GAN_MODELS", dict(models.GAN_MODELS))
    argv = ["--", "train", "lenet5", "--dataset", "mnist", "--data-dir", str(mnist_dir),
            "--epochs", "2", "--batch-size", "32", "--quiet"]
    for name, eps in (("plain", "0"), ("again", "0"), ("nudged", "1e-3")):
        assert drift.main(["run", "--perturb", eps, "--out", str(tmp_path / name), *argv]) == 0
    trained = {}
    for name in ("plain", "nudged"):
        model = models.LeNet5(in_channels=1, padding=2)
        dlx.load(tmp_path / name / "model.npz", model, restore_rng=False)
        trained[name] = dlx.to_numpy(model[0].weight.data)
    assert not np.array_equal(trained["plain"], trained["nudged"])
    out = tmp_path / "gaps.json"
    files = [str(tmp_path / n / "history.json") for n in ("plain", "again", "nudged")]
    assert drift.main(["compare", *files, "--json", str(out)]) == 0
    gaps = json.loads(out.read_text())["gaps"]
    same, nudged = gaps[files[1]], gaps[files[2]]
    assert set(same) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert "time_s" not in same and "lr" not in same
    assert all(g["max_abs_gap"] == 0.0 and g["epochs"] == 2 for g in same.values())  # same bits
    assert nudged["loss"]["max_abs_gap"] > 0.0  # a nudge of 1e-3 changes the run
    ref = json.loads(Path(files[0]).read_text())
    other = json.loads(Path(files[2]).read_text())
    assert np.isclose(nudged["val_loss"]["max_abs_gap"],
                      max(abs(a - b) for a, b in zip(ref["val_loss"], other["val_loss"])))
    assert "max |gap|" in capsys.readouterr().out


def test_drift_compare_reads_gan_scores(tmp_path):
    drift = _load("float32_drift", "benchmarks")
    rows = [{"epoch": e, "d_loss": 1.0 + e, "inception_score": 2.0 * e, "time_s": 9.0}
            for e in (1, 2, 3)]
    (tmp_path / "a.json").write_text(json.dumps({"epochs": rows}))
    shifted = [dict(r, d_loss=r["d_loss"] + 0.25 * r["epoch"]) for r in rows[:2]]
    (tmp_path / "b.json").write_text(json.dumps({"epochs": shifted}))
    out = tmp_path / "g.json"
    assert drift.main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                       "--json", str(out)]) == 0
    gaps = json.loads(out.read_text())["gaps"][str(tmp_path / "b.json")]
    assert gaps["d_loss"] == {"max_abs_gap": 0.5, "at_epoch": 2, "epochs": 2, "last_gap": 0.5}
    assert gaps["inception_score"]["max_abs_gap"] == 0.0 and "time_s" not in gaps
