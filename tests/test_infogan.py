"""InfoGAN (``dlx.models.infogan``, ``gan_step(..., codes=...)``, ``dlx gan --info-codes``):
shapes, float64 gradients, one step against PyTorch, the training loop's figures, and the
command with its sample grid and judge."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_gan import _torch_seq, score_and_rescore  # tests/test_gan.py

import dlx
from dlx import metrics, optim
from dlx.models import InfoDCGANDiscriminator, InfoDCGANGenerator
from dlx.testing import gradcheck
from dlx.training import gan_step
from dlx.training.gan import train_gan


@pytest.mark.parametrize("sn", [False, True])
def test_shapes_and_backward(dev, sn):
    g = InfoDCGANGenerator(latent_dim=6, num_codes=4, channels=4, device=dev)
    d = InfoDCGANDiscriminator(num_codes=4, channels=4, spectral_norm=sn, device=dev)
    z = dev.asarray(np.random.default_rng(1).standard_normal((3, 6)), dtype="float32")
    codes = dev.asarray(np.array([0, 3, 1]))
    fake = g(z, codes)
    assert fake.shape == (3, 1, 28, 28)
    out = d(fake)
    assert out.shape == (3, 1 + 4)
    dz = g.backward(d.backward(dev.xp.ones_like(out)))
    assert dz.shape == (3, 6)
    assert all(p.grad is not None for p in d.parameters())
    assert all(p.grad is not None for p in g.parameters())
    assert [k for k, _ in d.named_parameters()][-2:] == ["q_head.weight", "q_head.bias"]


def test_bad_num_codes_is_refused():
    with pytest.raises(ValueError, match="num_codes must be an int >= 2"):
        InfoDCGANDiscriminator(num_codes=1)


@pytest.mark.parametrize("sn", [False, True])
def test_discriminator_gradients_float64(sn):
    d = InfoDCGANDiscriminator(num_codes=3, channels=2, spectral_norm=sn).double()
    if sn:
        d.eval()  # eval: spectral norm's u, v fixed, a fixed function to difference
    x = dlx.asarray(np.random.default_rng(2).standard_normal((2, 1, 28, 28)), dtype="float64")
    # the input and both heads: a full check of 28x28 convolutions is slow
    for p in d.features.parameters():
        p.requires_grad = False
    assert gradcheck(d, x, rtol=1e-4, atol=1e-7)


@pytest.mark.torch
@pytest.mark.parametrize("loss", ["bce", "hinge"])
def test_gan_step_with_codes_matches_torch(loss):
    """One InfoGAN step (SGD, so the update is the gradient itself) gives the weights and
    running statistics of the same step written the usual PyTorch way: the code's
    cross-entropy (weight 2) in the discriminator's loss on the fake batch and in the
    generator's, none on the real batch."""
    torch = pytest.importorskip("torch")
    tn, weight, lr = torch.nn, 2.0, 0.05
    g = InfoDCGANGenerator(latent_dim=5, num_codes=3, embed_dim=2, channels=2)
    d = InfoDCGANDiscriminator(num_codes=3, channels=2)
    tg = tn.ModuleDict({"embed": tn.Embedding(3, 2), "body": _torch_seq(torch, g.body)})
    td = tn.ModuleDict({"features": _torch_seq(torch, d.features), "head": tn.Linear(196, 1),
                        "q_head": tn.Linear(196, 3)})
    for mine, theirs in ((g, tg), (d, td)):
        theirs.load_state_dict({k: torch.from_numpy(np.array(dlx.to_numpy(v)))
                                for k, v in mine.state_dict().items()})
    rng = np.random.default_rng(0)
    real = rng.uniform(-1, 1, (6, 1, 28, 28)).astype(np.float32)
    z = rng.standard_normal((6, 5)).astype(np.float32)
    codes = np.array([0, 2, 1, 1, 0, 2])
    out = gan_step(g, d, dlx.asarray(real), dlx.asarray(z), optim.SGD(g.parameters(), lr=lr),
                   optim.SGD(d.parameters(), lr=lr), loss=loss, codes=dlx.asarray(codes),
                   info_weight=weight)

    def tgen(z, c):
        return tg["body"](torch.cat([z, tg["embed"](c)], 1))

    def tdisc(x):
        h = td["features"](x)
        return torch.cat([td["head"](h), td["q_head"](h)], 1)

    def critic(score, real_side):
        if loss == "hinge":
            return torch.relu(1 - score).mean() if real_side else torch.relu(1 + score).mean()
        target = torch.ones_like(score) if real_side else torch.zeros_like(score)
        return tn.functional.binary_cross_entropy_with_logits(score, target)

    c = torch.from_numpy(codes)
    ce = tn.CrossEntropyLoss()
    d_opt, g_opt = torch.optim.SGD(td.parameters(), lr=lr), torch.optim.SGD(tg.parameters(), lr=lr)
    fake = tgen(torch.from_numpy(z), c)
    out_real, out_fake = tdisc(torch.from_numpy(real)), tdisc(fake.detach())
    info = ce(out_fake[:, 1:], c)
    d_loss = critic(out_real[:, :1], True) + critic(out_fake[:, :1], False)
    d_opt.zero_grad()
    (d_loss + weight * info).backward()
    d_opt.step()
    o = tdisc(fake)
    g_score = -o[:, :1].mean() if loss == "hinge" else critic(o[:, :1], True)
    g_opt.zero_grad()
    (g_score + weight * ce(o[:, 1:], c)).backward()
    g_opt.step()
    assert float(out["d_loss"]) == pytest.approx(d_loss.item(), rel=1e-5)
    assert float(out["info_loss"]) == pytest.approx(info.item(), rel=1e-5)
    assert float(out["g_loss"]) == pytest.approx(g_score.item(), rel=1e-5, abs=1e-6)
    for mine, theirs in ((g, tg), (d, td)):
        want = {k: v.detach().numpy() for k, v in theirs.state_dict().items()}
        for k, v in mine.state_dict().items():
            np.testing.assert_allclose(dlx.to_numpy(v), want[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_codes_and_labels_together_are_refused():
    g, d = InfoDCGANGenerator(latent_dim=4, channels=2), InfoDCGANDiscriminator(channels=2)
    x, z = dlx.asarray(np.zeros((2, 1, 28, 28), np.float32)), dlx.asarray(np.zeros((2, 4), np.float32))
    y = dlx.asarray(np.array([0, 1]))
    with pytest.raises(ValueError, match="labels .* or codes .*not both"):
        gan_step(g, d, x, z, optim.SGD(g.parameters(), 0.1), optim.SGD(d.parameters(), 0.1),
                 labels=y, codes=y)


def test_train_gan_draws_codes_and_logs_the_code_loss(dev):
    g = InfoDCGANGenerator(latent_dim=4, num_codes=3, channels=2, device=dev)
    d = InfoDCGANDiscriminator(num_codes=3, channels=2, spectral_norm=True, device=dev)
    real = dev.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 1, 28, 28)), dtype="float32")
    hist = train_gan(g, d, [(real, None)] * 3, epochs=2, device=dev, progress=False, loss="hinge")
    assert len(hist["info_loss"]) == 2 and all(0.0 < v < 10.0 for v in hist["info_loss"])
    assert all(np.isfinite(hist["g_loss"]))
    with pytest.raises(ValueError, match="reads 3 InfoGAN codes but the generator takes 5"):
        train_gan(InfoDCGANGenerator(latent_dim=4, num_codes=5, channels=2, device=dev), d,
                  [(real, None)], epochs=1, device=dev, progress=False)


def test_q_learns_to_read_the_codes_of_a_fixed_generator():
    """With the generator held still (a tiny learning rate), Q's cross-entropy falls from
    about ln 3 as the discriminator learns to read the code back from the image (PyTorch's
    default initialisation: DCGAN's N(0, 0.02) leaves the codes' images nearly alike)."""
    g = InfoDCGANGenerator(latent_dim=4, num_codes=3, channels=4, dcgan_init=False)
    d = InfoDCGANDiscriminator(num_codes=3, channels=4, spectral_norm=True)
    go, do = optim.SGD(g.parameters(), 1e-12), optim.Adam(d.parameters(), 2e-3, betas=(0.0, 0.9))
    rng = np.random.default_rng(5)
    real = dlx.asarray(np.tanh(rng.standard_normal((24, 1, 28, 28))), dtype="float32")
    losses = []
    for _ in range(40):
        z = dlx.asarray(rng.standard_normal((24, 4)), dtype="float32")
        codes = dlx.asarray(rng.integers(0, 3, 24))
        losses.append(float(gan_step(g, d, real, z, go, do, loss="hinge", codes=codes)["info_loss"]))
    assert losses[0] == pytest.approx(np.log(3), abs=0.3)
    assert max(losses[-3:]) < 0.5 * losses[0], losses


def test_code_purity():
    assert metrics.code_purity([0, 0, 1, 1], [3, 3, 5, 5]) == 1.0
    assert metrics.code_purity([0, 0, 0, 1], [3, 3, 4, 5]) == 0.75
    assert metrics.code_purity([0, 1, 2, 0], [7, 7, 7, 7]) == 1.0  # codes sharing one class
    with pytest.raises(ValueError, match="equally long, non-empty"):
        metrics.code_purity([0, 1], [1])


def test_info_command_sample_grid_and_judge(mnist_dir, tmp_path, capsys):
    """dlx gan --info-codes trains, logs the code loss and purity, saves a checkpoint that
    dlx gan sample draws one row per code from and dlx gan score judges with the codes drawn
    at random (kept in samples.npz)."""
    from dlx.cli import main
    from dlx.models import LeNet5

    clf = tmp_path / "lenet.npz"
    dlx.save(clf, LeNet5(in_channels=1, padding=2), dataset="mnist", architecture="lenet5")
    out = tmp_path / "infogan"
    assert main(["gan", "--info-codes", "4", "--info-weight", "1.5", "--spectral-norm", "--loss",
                 "hinge", "--epochs", "1", "--batch-size", "16", "--limit", "32", "--channels", "4",
                 "--data-dir", str(mnist_dir), "--out", str(out), "--classifier", str(clf),
                 "--num-eval", "20", "--ema", "0.9", "--quiet"]) == 0
    row = json.loads((out / "scores.json").read_text())["epochs"][0]
    assert 0.0 < row["info_loss"] and 0.25 <= row["code_purity"] <= 1.0
    assert "label_accuracy" not in row
    meta = dlx.load(out / "generator_ema.npz", InfoDCGANGenerator(num_codes=4, channels=4),
                    restore_rng=False)
    assert meta["info_codes"] == 4 and meta["conditional"] is False

    judged, z, again, logits = score_and_rescore(out / "generator_ema.npz", clf, mnist_dir, tmp_path, 20)
    assert judged["info_codes"] == 4 and "code_purity" in judged["generated"]
    assert set(z) == {"images", "codes"} and z["codes"].max() <= 3
    codes = z["codes"].astype(np.int64)
    assert again == pytest.approx(judged["generated"]["inception_score"], rel=1e-9)
    assert judged["generated"]["code_purity"] == metrics.code_purity(codes, logits.argmax(1))
    assert len(set(codes.tolist())) > 1  # drawn at random, not one code
    capsys.readouterr()

    pytest.importorskip("matplotlib")
    grid = tmp_path / "grid.png"
    assert main(["gan", "sample", str(out / "generator_ema.npz"), "--per-digit", "3", "--out",
                 str(grid)]) == 0
    assert grid.stat().st_size > 2000 and "12 samples" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--info-codes", "4", "--conditional"], "choose one"),
    (["--info-weight", "2"], "it needs --info-codes K"),
    (["--info-codes", "4", "--model", "mlp"], "are for the DCGAN"),
])
def test_info_command_refuses_bad_combinations(mnist_dir, tmp_path, capsys, argv, message):
    from dlx.cli import main

    out = tmp_path / "x"
    assert main(["gan", *argv, "--epochs", "1", "--limit", "32", "--batch-size", "16",
                 "--data-dir", str(mnist_dir), "--out", str(out), "--quiet"]) == 1
    assert message in capsys.readouterr().err and not out.exists()
    assert main(["gan", "--info-codes", "1"]) == 2  # argparse: K >= 2
    assert "must be >= 2" in capsys.readouterr().err
