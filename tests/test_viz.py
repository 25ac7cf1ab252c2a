"""dlx.apps.viz: saliency against finite differences and PyTorch, occlusion against a naive loop,
activation maximisation, feature maps, filters and the PNG writers, on tiny random nets."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import dlx
from dlx import nn
from dlx.apps import viz


def tiny_net(dev="cpu", dtype="float64"):
    """conv 3@3x3 (pad 1) -> ReLU -> max-pool 2 -> flatten -> 4 classes, on 2x8x8 inputs."""
    dlx.manual_seed(3)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 4)).to(dev, dtype)


def tiny_input(n=2, seed=1):
    return np.random.default_rng(seed).normal(size=(n, 2, 8, 8))


def logits_np(model, x):
    return dlx.to_numpy(model.eval()(dlx.asarray(x, device="cpu", dtype="float64")))


def finite_difference(model, x, targets, eps=1e-6):
    """d logit[targets[n]] / d x[n] by central differences on the cpu float64 model."""
    g = np.zeros_like(x)
    rows = np.arange(len(x))
    for idx in np.ndindex(*x.shape[1:]):
        xp_, xm = x.copy(), x.copy()
        xp_[(slice(None), *idx)] += eps
        xm[(slice(None), *idx)] -= eps
        diff = logits_np(model, xp_)[rows, targets] - logits_np(model, xm)[rows, targets]
        g[(slice(None), *idx)] = diff / (2 * eps)
    return g


def test_saliency_is_the_finite_difference_gradient(dev):
    ref = tiny_net("cpu")
    model = tiny_net(dev)
    x, targets = tiny_input(), [1, 3]
    fd = finite_difference(ref, x, targets)
    xd = dlx.asarray(x, device=dev, dtype="float64")
    grad = viz.input_gradient(model, xd, targets)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
    assert np.abs(fd).max() > 1e-2  # the gradient is not trivially zero
    sal = viz.saliency(model, xd, targets)
    assert sal.shape == (2, 8, 8)
    np.testing.assert_allclose(sal, np.abs(fd).max(axis=1), rtol=1e-6, atol=1e-8)
    # a different class gives a different map (the target is honoured)
    assert not np.allclose(viz.saliency(model, xd, [0, 0]), sal)


def test_saliency_matches_torch_autograd():
    torch = pytest.importorskip("torch")
    model = tiny_net("cpu", "float32")
    ref = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(48, 4))
    ref.load_state_dict({k: torch.from_numpy(dlx.to_numpy(v).copy()) for k, v in model.state_dict().items()})
    x, targets = tiny_input(3, seed=5).astype(np.float32), [0, 2, 1]
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    ref(xt)[torch.arange(3), torch.tensor(targets)].sum().backward()
    g = xt.grad.numpy()
    xd = dlx.asarray(x, device="cpu")
    np.testing.assert_allclose(viz.input_gradient(model, xd, targets), g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(viz.saliency(model, xd, targets), np.abs(g).max(axis=1), rtol=1e-5, atol=1e-6)


def test_inspection_leaves_model_state_alone():
    model = tiny_net("cpu").train()
    model[4].requires_grad_(False)  # a partly frozen model stays partly frozen
    model[0].weight.grad = np.full(model[0].weight.shape, 7.0)
    before = {k: dlx.to_numpy(v).copy() for k, v in model.state_dict().items()}
    x = dlx.asarray(tiny_input(), device="cpu", dtype="float64")
    viz.saliency(model, x, 0)
    viz.feature_maps(model, x)
    viz.occlusion(model, x[0], 1, patch=4, stride=4)
    assert all(m.training for m in model.modules())
    assert model[0].weight.requires_grad and not model[4].weight.requires_grad
    assert model[0]._grad_enabled and not model[4]._grad_enabled
    assert np.all(model[0].weight.grad == 7.0) and model[0].bias.grad is None
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(dlx.to_numpy(v), before[k])


def naive_occlusion(model, x, target, patch, stride, fill):
    ph, pw = patch
    sh, sw = stride
    _, h, w = x.shape

    def prob(img):
        z = logits_np(model, img[None])[0]
        e = np.exp(z - z.max())
        return e[target] / e.sum()

    p0 = prob(x)
    out = []
    for i in range(0, h - ph + 1, sh):
        row = []
        for j in range(0, w - pw + 1, sw):
            occ = x.copy()
            occ[:, i : i + ph, j : j + pw] = np.asarray(fill).reshape(-1, 1, 1)
            row.append(p0 - prob(occ))
        out.append(row)
    return np.array(out)


def test_occlusion_equals_a_naive_loop(dev):
    ref, model = tiny_net("cpu"), tiny_net(dev)
    x = tiny_input(1, seed=7)[0]
    fill = [0.5, -1.0]
    want = naive_occlusion(ref, x, 2, (3, 2), (2, 3), fill)
    got = viz.occlusion(model, dlx.asarray(x, device=dev, dtype="float64"), 2, patch=(3, 2),
                        stride=(2, 3), fill=fill, batch_size=4)  # 3 x 3 positions in batches of 4
    assert got.shape == want.shape == (3, 3)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert np.abs(want).max() > 1e-3


def one_pixel_net(dev, r=5, c=6):
    """Class 0's logit is 3 * (sum over channels of pixel (r, c)); every other logit is 0."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 8 * 8, 3)).to(dev, "float64")
    w = np.zeros((3, 2, 8, 8))
    w[0, :, r, c] = 3.0
    model[1].weight.data = dlx.asarray(w.reshape(3, -1), device=dev, dtype="float64")
    model[1].bias.data = dlx.asarray(np.zeros(3), device=dev, dtype="float64")
    return model


def test_occlusion_is_zero_where_the_patch_misses_what_matters(dev):
    model = one_pixel_net(dev)
    x = np.random.default_rng(0).uniform(-0.1, 0.1, (2, 8, 8))
    x[:, 5, 6] = 1.0
    drop = viz.occlusion(model, dlx.asarray(x, device=dev, dtype="float64"), 0, patch=3, stride=1)
    assert drop.shape == (6, 6)
    covers = np.zeros((6, 6), bool)
    covers[3:6, 4:7] = True  # top-left corners (i, j) with i <= 5 < i + 3 and j <= 6 < j + 3
    assert np.all(drop[~covers] == 0.0)
    assert np.all(drop[covers] > 0.5)  # p(class 0) falls from ~1 to 1/3
    sal = viz.saliency(model, dlx.asarray(x[None], device=dev, dtype="float64"), 0)[0]
    assert sal[5, 6] == pytest.approx(3.0) and np.count_nonzero(sal) == 1


def test_activation_maximisation_climbs_and_leaves_parameters_alone(dev):
    model = tiny_net(dev, "float32").train()
    before = [dlx.to_numpy(p.data).copy() for p in model.parameters()]
    imgs, scores = viz.activation_maximisation(model, [0, 3], shape=(2, 8, 8), steps=40, lr=0.1,
                                               seed=4, blur=0.0)
    assert imgs.shape == (2, 2, 8, 8) and scores.shape == (41, 2)
    assert np.all(scores[-1] > scores[0] + 5.0), scores[[0, -1]]
    assert np.mean(np.diff(scores, axis=0) > 0) > 0.95  # without the blur every step climbs
    # with the default L2 and blur priors it still climbs, more slowly
    _, blurred = viz.activation_maximisation(model, [0, 3], shape=(2, 8, 8), steps=40, lr=0.1, seed=4)
    assert np.all(blurred[-1] > blurred[0] + 1.0) and np.all(blurred[-1] < scores[-1])
    # the scores are the logits of the returned images
    np.testing.assert_allclose(logits_np(tiny_net("cpu"), imgs.astype(np.float64))[[0, 1], [0, 3]],
                               scores[-1], rtol=1e-4, atol=1e-4)
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(dlx.to_numpy(p.data), b)
        assert p.grad is None
    assert model.training
    # same host-drawn start on every device: the cpu run gives the same images
    cpu_imgs, _ = viz.activation_maximisation(tiny_net("cpu", "float32"), [0, 3], shape=(2, 8, 8),
                                              steps=40, lr=0.1, seed=4, blur=0.0)
    np.testing.assert_allclose(imgs, cpu_imgs, rtol=1e-4, atol=1e-4)


def test_activation_maximisation_of_a_channel_and_bounds():
    model = tiny_net("cpu", "float32")
    imgs, scores = viz.activation_maximisation(model, 1, shape=(2, 8, 8), steps=30, layer="1:ReLU",
                                               bounds=(-0.5, [0.5, 0.25]), seed=2, blur=0.0)
    x = dlx.asarray(imgs, device="cpu")
    ch_mean = viz.feature_maps(model, x, layers=[1])["1:ReLU"][:, 1].mean()
    assert ch_mean == pytest.approx(scores[-1, 0], rel=1e-5)
    assert scores[-1, 0] > scores[0, 0] + 0.05 and np.all(np.diff(scores[:, 0]) >= 0)
    assert imgs.min() >= -0.5 and imgs[:, 0].max() <= 0.5 and imgs[:, 1].max() <= 0.25


def test_feature_maps_are_the_layer_outputs(dev):
    model = tiny_net(dev)
    x = dlx.asarray(tiny_input(), device=dev, dtype="float64")
    maps = viz.feature_maps(model, x)
    assert list(maps) == ["0:Conv2d", "1:ReLU", "2:MaxPool2d", "3:Flatten", "4:Linear"]
    shapes = [(2, 3, 8, 8), (2, 3, 8, 8), (2, 3, 4, 4), (2, 48), (2, 4)]
    h = x
    for (key, got), shape, layer in zip(maps.items(), shapes, model):
        h = layer(h)
        assert got.shape == shape, key
        np.testing.assert_allclose(got, dlx.to_numpy(h), rtol=1e-12)
    some = viz.feature_maps(model, x, layers=[2, "0", "4:Linear"])
    assert list(some) == ["0:Conv2d", "2:MaxPool2d", "4:Linear"]
    with pytest.raises(ValueError, match="unknown layer"):
        viz.feature_maps(model, x, layers=["5:ReLU"])


def test_first_layer_filters(dev):
    model = tiny_net(dev)
    f = viz.first_layer_filters(model)
    raw = viz.first_layer_filters(model, raw=True)
    assert f.shape == raw.shape == (3, 3, 3, 2)
    np.testing.assert_allclose(raw, dlx.to_numpy(model[0].weight.data).transpose(0, 2, 3, 1))
    assert f.min() >= 0 and f.max() <= 1
    np.testing.assert_allclose(np.abs(f - 0.5).reshape(3, -1).max(axis=1), 0.5)  # per-filter scale
    np.testing.assert_allclose(np.sign(f - 0.5), np.sign(raw))  # grey is zero, sign kept
    with pytest.raises(ValueError, match="no Conv2d"):
        viz.first_layer_filters(nn.Sequential(nn.Linear(2, 2)))


def test_to_display_undoes_normalisation():
    img = np.random.default_rng(0).uniform(0, 1, (2, 3, 4, 5))
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    norm = (img - np.reshape(mean, (1, 3, 1, 1))) / np.reshape(std, (1, 3, 1, 1))
    out = viz.to_display(dlx.asarray(norm, device="cpu", dtype="float64"), mean, std)
    np.testing.assert_allclose(out, img.transpose(0, 2, 3, 1))
    assert viz.to_display(np.full((1, 4, 4), 3.0)).shape == (1, 4, 4)


def test_plots_write_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    model = tiny_net("cpu", "float32")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 8, 8)).astype(np.float32)
    imgs = rng.uniform(0, 1, (3, 8, 8, 3))
    xd = dlx.asarray(x, device="cpu")
    am, scores = viz.activation_maximisation(model, [0, 1], shape=(2, 8, 8), steps=5)
    paths = [
        viz.plot_filters(viz.first_layer_filters(model, raw=True), tmp_path / "f.png", title="filters"),
        viz.plot_filters(rng.normal(size=(4, 5, 5, 3)), tmp_path / "rgb.png"),
        viz.plot_feature_maps(imgs[0], viz.feature_maps(model, xd[:1], layers=[1, 2]), tmp_path / "m.png"),
        viz.plot_saliency(imgs, viz.saliency(model, xd, 0), tmp_path / "s.png", titles=["a", "b", "c"]),
        viz.plot_occlusion(imgs, np.stack([viz.occlusion(model, xd[i], 0, patch=3, stride=2)
                                           for i in range(3)]), tmp_path / "o.png", 3, 2, titles=list("abc")),
        viz.plot_activation_maximisation(rng.uniform(0, 1, (2, 8, 8, 3)), tmp_path / "a.png",
                                         titles=["a", "b"], scores=scores),
    ]
    for p in paths:
        data = Path(p).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, p


def test_plots_without_matplotlib_name_the_extra(monkeypatch, tmp_path):
    import dlx.plots

    monkeypatch.setattr(dlx.plots, "have_matplotlib", lambda: False)
    with pytest.raises(ImportError, match=r'pip install "dlx\[plots\]"'):
        viz.plot_filters(np.zeros((2, 3, 3, 1)), tmp_path / "f.png")


def test_computations_use_the_array_namespace_only():
    """The one rule, for the computations of dlx.apps.viz (methods.py; the pictures are in
    plots.py): no array library imported anywhere in the module, and no ``np`` name used."""
    spec = importlib.util.find_spec("dlx.apps.viz.methods")
    tree = ast.parse(Path(spec.origin).read_text())
    forbidden = {"numpy", "cupy", "numba", "cupyx", "array_api_strict"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not {a.name.split(".")[0] for a in node.names} & forbidden, node.lineno
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] not in forbidden, node.lineno
        elif isinstance(node, ast.Name):
            assert node.id != "np", node.lineno
    assert any(isinstance(fn, ast.FunctionDef) and fn.name == "saliency" for fn in tree.body)
