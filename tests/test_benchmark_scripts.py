"""The benchmark helpers that produce recorded figures: benchmarks/float32_drift.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_drift_run_nudges_weights_and_compare_reports_gaps(mnist_dir, tmp_path, monkeypatch, capsys):
    import dlx
    import dlx.gan
    from dlx import models

    drift = _load("float32_drift")
    # the patches `run` makes to the model classes are undone after the test
    monkeypatch.setattr(models, "LeNet5", models.LeNet5)
    monkeypatch.setattr(dlx.gan, "MODELS", dict(dlx.gan.MODELS))
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
    drift = _load("float32_drift")
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
