"""k-means (``dlx.data.cluster``) and the cluster-conditioned GAN (``dlx gan --clusters K``):
the clusters of well-separated blobs, determinism, bad input, and the command with its grid
and judge."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_gan import score_and_rescore  # tests/test_gan.py

import dlx
from dlx.data.cluster import kmeans


def _blobs(seed=0):
    """Three tight blobs of 50, 30 and 20 points far apart, in 5-D, shuffled."""
    rng = np.random.default_rng(seed)
    means = np.array([[0.0] * 5, [10.0] * 5, [-10.0, 10.0, -10.0, 10.0, -10.0]])
    truth = np.repeat([0, 1, 2], [50, 30, 20])
    x = means[truth] + 0.1 * rng.standard_normal((100, 5))
    order = rng.permutation(100)
    return x[order], truth[order], means


def test_kmeans_finds_separated_blobs_numbered_by_size():
    x, truth, means = _blobs()
    centers, assignment = kmeans(x, 3, seed=1)
    assert assignment.dtype == np.int64 and assignment.shape == (100,)
    np.testing.assert_array_equal(assignment, truth)  # largest blob is cluster 0, and so on
    np.testing.assert_allclose(centers, means, atol=0.05)
    for j in range(3):  # each center is the mean of its rows
        np.testing.assert_allclose(centers[j], x[assignment == j].mean(axis=0), atol=1e-12)


def test_kmeans_is_deterministic_and_chunking_does_not_matter():
    x = np.random.default_rng(3).standard_normal((300, 4)).astype(np.float32)
    c1, a1 = kmeans(x, 7, seed=5)
    c2, a2 = kmeans(x, 7, seed=5, chunk=64)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_allclose(c1, c2, rtol=1e-12, atol=1e-12)
    assert np.bincount(a1, minlength=7).tolist() == sorted(np.bincount(a1, minlength=7), reverse=True)
    # every row is at its nearest center
    d = ((x[:, None, :].astype(np.float64) - c1[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(d.argmin(axis=1), a1)


def test_kmeans_one_cluster_and_duplicate_rows():
    x = np.ones((10, 3))
    centers, assignment = kmeans(x, 4, seed=0)  # identical rows: clusters fall empty, and
    assert np.isfinite(centers).all()  # are refilled rather than divided by a zero count
    np.testing.assert_allclose(centers, 1.0)
    c, a = kmeans(np.arange(12.0).reshape(6, 2), 1)
    assert a.tolist() == [0] * 6 and np.allclose(c, [[5.0, 6.0]])


@pytest.mark.parametrize("x, k, message", [
    (np.zeros((0, 3)), 1, "non-empty"),
    (np.zeros(5), 1, r"\(N, D\)"),
    (np.zeros((4, 2)), 5, "k must be an int from 1 to the 4 rows"),
    (np.zeros((4, 2)), 0, "k must be an int"),
    (np.zeros((4, 2)), 2.0, "k must be an int"),
    (np.array([[0.0, np.nan]]), 1, "NaN or infinite"),
])
def test_kmeans_refuses_bad_input(x, k, message):
    with pytest.raises(ValueError, match=message):
        kmeans(x, k)


def test_cluster_command_grid_and_judge(mnist_dir, tmp_path, capsys):
    """dlx gan --clusters K: k-means summary in scores.json, clusters in the checkpoint's
    metadata, samples and scores drawing each cluster by its share, rows of the grid."""
    from dlx.cli import main
    from dlx.models import ConditionalDCGANGenerator, LeNet5

    clf = tmp_path / "lenet.npz"
    dlx.save(clf, LeNet5(in_channels=1, padding=2), dataset="mnist", architecture="lenet5")
    out = tmp_path / "sgan"
    assert main(["gan", "--clusters", "3", "--spectral-norm", "--loss", "hinge", "--epochs", "1",
                 "--batch-size", "16", "--limit", "48", "--channels", "4", "--data-dir",
                 str(mnist_dir), "--out", str(out), "--classifier", str(clf), "--num-eval", "20",
                 "--quiet"]) == 0
    assert "k-means: 3 clusters of the 48 training images" in capsys.readouterr().out
    report = json.loads((out / "scores.json").read_text())
    clusters = report["clusters"]
    assert clusters["k"] == 3 and sum(clusters["sizes"]) == 48
    assert clusters["sizes"] == sorted(clusters["sizes"], reverse=True)
    assert sum(clusters["frequencies"]) == pytest.approx(1.0) and 0 < clusters["label_purity"] <= 1
    assert 0 < report["epochs"][0]["code_purity"] <= 1
    meta = dlx.load(out / "generator.npz", ConditionalDCGANGenerator(num_classes=3, channels=4),
                    restore_rng=False)
    assert meta["clusters"] == 3 and meta["cluster_frequencies"] == clusters["frequencies"]

    judged, z, again, _ = score_and_rescore(out / "generator.npz", clf, mnist_dir, tmp_path, 30)
    assert judged["clusters"] == 3 and "code_purity" in judged["generated"]
    assert set(z) == {"images", "clusters"} and z["clusters"].max() <= 2
    assert again == pytest.approx(judged["generated"]["inception_score"], rel=1e-9)
    capsys.readouterr()

    pytest.importorskip("matplotlib")
    grid = tmp_path / "grid.png"
    assert main(["gan", "sample", str(out / "generator.npz"), "--per-digit", "2", "--out",
                 str(grid)]) == 0
    assert grid.stat().st_size > 2000 and "6 samples" in capsys.readouterr().out


def test_cluster_command_refuses_a_second_class_input(mnist_dir, tmp_path, capsys):
    from dlx.cli import main

    out = tmp_path / "x"
    for extra in (["--conditional"], ["--info-codes", "3"]):
        assert main(["gan", "--clusters", "3", *extra, "--epochs", "1", "--limit", "32",
                     "--data-dir", str(mnist_dir), "--out", str(out), "--quiet"]) == 1
        assert "choose one" in capsys.readouterr().err and not out.exists()
    assert main(["gan", "--clusters", "3", "--model", "mlp", "--data-dir", str(mnist_dir),
                 "--out", str(out)]) == 1
    assert "are for the DCGAN" in capsys.readouterr().err
    assert main(["gan", "--cluster-on", "deskewed", "--data-dir", str(mnist_dir), "--out",
                 str(out)]) == 1
    assert "needs --clusters" in capsys.readouterr().err and not out.exists()


def test_cluster_command_on_deskewed_pixels(mnist_dir, tmp_path, capsys):
    from dlx.cli import main

    out = tmp_path / "sgan"
    assert main(["gan", "--clusters", "3", "--cluster-on", "deskewed", "--epochs", "1",
                 "--batch-size", "16", "--limit", "48", "--channels", "4", "--data-dir",
                 str(mnist_dir), "--out", str(out), "--quiet"]) == 0
    assert "3 clusters of the 48 training images' deskewed pixels" in capsys.readouterr().out
    clusters = json.loads((out / "scores.json").read_text())["clusters"]
    assert clusters["on"] == "deskewed" and sum(clusters["sizes"]) == 48


def _moments(img):
    """(centre row, centre column, cov(x, y) / var(y)) of one image's intensity."""
    h, w = img.shape
    r, c = np.mgrid[:h, :w]
    t = img.sum()
    cy, cx = (r * img).sum() / t, (c * img).sum() / t
    return cy, cx, ((r - cy) * (c - cx) * img).sum() / ((r - cy) ** 2 * img).sum()


def test_deskew_stands_a_slanted_stroke_upright():
    """A stroke slanted by 0.5 column per row (and off centre) comes out vertical, in the
    middle column: its slant moment is 0 and every row's mass sits at column (W-1)/2."""
    from dlx.data.cluster import deskew

    img = np.zeros((21, 21), np.float32)
    for r in range(3, 18):
        img[r, 4 + (r - 3) // 2] = 1.0  # 0.5 column per row, integer steps
    assert _moments(img)[2] > 0.4
    (out,) = deskew(img[None])
    assert out.dtype == np.float32 and out.shape == img.shape
    cy, cx, slant = _moments(out)
    assert abs(slant) < 0.05 and abs(cx - 10) < 0.05
    assert out.sum() == pytest.approx(img.sum(), rel=1e-5)  # interpolation keeps the mass here


def test_deskew_keeps_upright_centred_images_and_handles_degenerate_ones():
    from dlx.data.cluster import deskew

    upright = np.zeros((1, 9, 9), np.float32)
    upright[0, 2:7, 4] = 1.0  # a vertical stroke in the middle column
    upright[0, 4, 3:6] = 0.5  # symmetric about it: no slant
    np.testing.assert_array_equal(deskew(upright), upright)
    empty = np.zeros((2, 5, 7), np.uint8)
    np.testing.assert_array_equal(deskew(empty), empty.astype(np.float32))
    row = np.zeros((1, 5, 7), np.float32)
    row[0, 2, 0:3] = 1.0  # one row: no slant to measure, only centred (mass at column 1 -> 3)
    out = deskew(row)
    np.testing.assert_allclose(out[0, 2], [0, 0, 1, 1, 1, 0, 0], atol=1e-6)
    many = np.random.default_rng(0).random((9, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(deskew(many, chunk=4), deskew(many), rtol=0, atol=0)


@pytest.mark.parametrize("images, message", [
    (np.zeros((4, 4)), r"\(N, H, W\)"),
    (np.full((1, 2, 2), np.nan), "NaN or infinite"),
])
def test_deskew_refuses_bad_input(images, message):
    from dlx.data.cluster import deskew

    with pytest.raises(ValueError, match=message):
        deskew(images)
