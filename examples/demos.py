"""The write-ups' small demos, done with dlx: each trains in seconds and writes one PNG.

    python examples/demos.py [--out runs/demos] [--device cpu] [--only moons circle ...]

- moons:      three-class two moons, softmax + cross-entropy, decision regions
- circle:     points of [0,1]^2 inside the circle of radius 1/sqrt(2 pi) (half the area),
              MSE with a tanh output, held-out accuracy
- gates:      AND, OR and XOR as tanh networks, outputs as contour plots over [0,1]^2
- regression: linear (one Linear), logistic (Linear + Sigmoid, BCE) and cubic polynomial
              (Linear on [x, x^2, x^3]) regression
- sine:       universal approximation: sin(2 pi x) fitted by one hidden tanh layer of 16

Prints one line per demo with its figure of merit; writes OUT/<demo>.png and OUT/demos.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np


def _fit(model, loss_fn, opt, x, y, epochs, batch=None, seed=0):
    import dlx

    rng = np.random.default_rng(seed)
    dev = model.device
    for _ in range(epochs):
        order = rng.permutation(len(x)) if batch else np.arange(len(x))
        for s in range(0, len(x), batch or len(x)):
            idx = order[s : s + (batch or len(x))]
            loss_fn(model(dlx.asarray(x[idx], device=dev)), dlx.asarray(y[idx], device=dev))
            model.backward_params(loss_fn.backward())
            opt.step()
            opt.zero_grad()


def _predict(model, x):
    import dlx

    model.eval()
    with dlx.no_grad():
        out = dlx.to_numpy(model(dlx.asarray(x, device=model.device)))
    model.train()
    return out


def _grid(lo, hi, n=200):
    g = np.linspace(lo, hi, n)
    xx, yy = np.meshgrid(g, g)
    return xx, yy, np.stack([xx.ravel(), yy.ravel()], axis=1)


def demo_moons(plt, dev, epochs):
    from dlx import nn, optim
    from dlx.data.toy import three_moons

    x, y = three_moons(1500, 1)
    xt, yt = three_moons(1500, 2)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 3)).to(dev)
    _fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=0.01), x, y, epochs, 64)
    acc = float(np.mean(_predict(model, xt).argmax(1) == yt))
    xx, yy, pts = _grid(-1.5, 4.0)
    regions = _predict(model, pts).argmax(1).reshape(xx.shape)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.contourf(xx, yy, regions, levels=[-0.5, 0.5, 1.5, 2.5], colors=["#c6dbef", "#fdd0a2", "#c7e9c0"])
    for c, color in zip(range(3), ["#08519c", "#d94801", "#238b45"]):
        ax.scatter(*xt[yt == c][:300].T, s=6, color=color, label=f"class {c}")
    ax.set(xlabel="x1", ylabel="x2", ylim=(-1.2, 1.6),
           title=f"Three moons: softmax network's decision regions (test accuracy {acc:.1%})")
    ax.legend(loc="upper right")
    return fig, {"test_accuracy": acc}


def demo_circle(plt, dev, epochs):
    from dlx import nn, optim
    from dlx.data.toy import circle

    x, y = circle(1000, 1)
    xt, yt = circle(1000, 2)
    model = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                          nn.Linear(32, 1), nn.Tanh()).to(dev)
    _fit(model, nn.MSELoss(), optim.Adam(model.parameters(), lr=0.01), x, y, epochs * 2, 32)
    acc = float(np.mean(np.sign(_predict(model, xt)) == yt))
    xx, yy, pts = _grid(0, 1)
    out = _predict(model, pts).reshape(xx.shape)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    cs = ax.contourf(xx, yy, out, levels=np.linspace(-1, 1, 21), cmap="RdBu_r")
    ax.add_patch(plt.Circle((0.5, 0.5), 1 / math.sqrt(2 * math.pi), fill=False, lw=2, ls="--",
                            label="true boundary r = 1/sqrt(2 pi)"))
    fig.colorbar(cs, ax=ax, label="network output (tanh)")
    ax.set(xlabel="x1", ylabel="x2", aspect="equal",
           title=f"Circle, MSE + tanh: held-out accuracy {acc:.1%}")
    ax.legend(loc="lower left", fontsize=8)
    return fig, {"test_accuracy": acc}


def demo_gates(plt, dev, epochs):
    import dlx
    from dlx import nn, optim

    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], float)
    targets = {"AND": [0, 0, 0, 1], "OR": [0, 1, 1, 1], "XOR": [0, 1, 1, 0]}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    out = {}
    for ax, (name, t) in zip(axes, targets.items()):
        dlx.manual_seed(0)
        y = np.array(t, float).reshape(-1, 1)
        model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1), nn.Tanh()).to(dev)
        _fit(model, nn.MSELoss(), optim.SGD(model.parameters(), lr=0.2, momentum=0.9), x, y,
             epochs * 20)
        pred = _predict(model, x).ravel()
        out[name] = {"outputs": [round(float(v), 3) for v in pred],
                     "correct": bool(np.all(np.abs(pred - y.ravel()) < 0.5))}
        xx, yy, pts = _grid(0, 1, 100)
        cs = ax.contourf(xx, yy, _predict(model, pts).reshape(xx.shape), levels=20, cmap="viridis")
        ax.scatter(x[:, 0], x[:, 1], c=t, cmap="gray", edgecolors="red", linewidths=2, s=160,
                   vmin=0, vmax=1, clip_on=False, zorder=3)
        shown = ", ".join(f"{v:.2f}" for v in pred)
        ax.set(xlabel="input a", ylabel="input b", title=f"{name}: 00, 01, 10, 11 -> {shown}")
        fig.colorbar(cs, ax=ax, label="network output")
    fig.suptitle("Logic gates learned by a 2-8-1 tanh network (MSE, SGD + momentum); "
                 "dots: the four inputs, filled by their target")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig, out


def demo_regression(plt, dev, epochs):
    import dlx
    from dlx import nn, optim

    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    res = {}
    # linear: y = 2x - 1 + noise
    x = rng.uniform(-1, 1, (200, 1))
    y = 2 * x - 1 + rng.normal(0, 0.1, x.shape)
    lin = nn.Linear(1, 1).to(dev)
    _fit(lin, nn.MSELoss(), optim.SGD(lin.parameters(), lr=0.1), x, y, epochs * 4)
    w, b = float(dlx.to_numpy(lin.weight.data)[0, 0]), float(dlx.to_numpy(lin.bias.data)[0])
    res["linear"] = {"weight": w, "bias": b, "true": [2.0, -1.0]}
    axes[0].scatter(x, y, s=6)
    axes[0].plot([-1, 1], [b - w, b + w], "r", label=f"fit y = {w:.2f}x {b:+.2f}")
    axes[0].set(xlabel="x", ylabel="y", title="linear regression (MSE)")
    axes[0].legend()
    # logistic: P(y=1) = sigmoid(4x)
    x = rng.uniform(-2, 2, (400, 1))
    y = (rng.uniform(0, 1, x.shape) < 1 / (1 + np.exp(-4 * x))).astype(float)
    logit = nn.Sequential(nn.Linear(1, 1), nn.Sigmoid()).to(dev)
    _fit(logit, nn.BCELoss(), optim.Adam(logit.parameters(), lr=0.05), x, y, epochs * 30)
    g = np.linspace(-2, 2, 100).reshape(-1, 1)
    res["logistic"] = {"slope": float(dlx.to_numpy(logit[0].weight.data)[0, 0]), "true_slope": 4.0}
    axes[1].scatter(x, y, s=6, alpha=0.4)
    axes[1].plot(g, _predict(logit, g), "r", label="fitted P(y=1|x)")
    axes[1].plot(g, 1 / (1 + np.exp(-4 * g)), "k--", label="true")
    axes[1].set(xlabel="x", ylabel="P(y = 1)", title="logistic regression (BCE)")
    axes[1].legend()
    # polynomial: y = x^3 - x + noise, features [x, x^2, x^3]
    x = rng.uniform(-1.5, 1.5, (300, 1))
    y = x**3 - x + rng.normal(0, 0.1, x.shape)
    feats = lambda v: np.concatenate([v, v**2, v**3], axis=1)  # noqa: E731
    poly = nn.Linear(3, 1).to(dev)
    _fit(poly, nn.MSELoss(), optim.Adam(poly.parameters(), lr=0.05), feats(x), y, epochs * 4)
    g = np.linspace(-1.5, 1.5, 100).reshape(-1, 1)
    res["polynomial"] = {"coefficients": dlx.to_numpy(poly.weight.data).ravel().round(3).tolist(),
                         "true": [-1.0, 0.0, 1.0]}
    axes[2].scatter(x, y, s=6)
    axes[2].plot(g, _predict(poly, feats(g)), "r", label="fitted cubic")
    axes[2].set(xlabel="x", ylabel="y", title="polynomial regression on [x, x², x³]")
    axes[2].legend()
    fig.tight_layout()
    return fig, res


def demo_sine(plt, dev, epochs):
    from dlx import nn, optim

    x = np.linspace(0, 1, 256).reshape(-1, 1)
    y = np.sin(2 * math.pi * x)
    model = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1)).to(dev)
    _fit(model, nn.MSELoss(), optim.Adam(model.parameters(), lr=0.01), x, y, epochs * 40, 32)
    pred = _predict(model, x)
    err = float(np.abs(pred - y).max())
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, y, "k--", label="sin(2 pi x)")
    ax.plot(x, pred, "r", label=f"1 hidden layer of 16 tanh (max error {err:.3f})")
    ax.set(xlabel="x", ylabel="y", title="Universal approximation")
    ax.legend()
    return fig, {"max_abs_error": err}


DEMOS = {"moons": demo_moons, "circle": demo_circle, "gates": demo_gates,
         "regression": demo_regression, "sine": demo_sine}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/demos")
    ap.add_argument("--device", default=None)
    ap.add_argument("--epochs", type=int, default=30, help="scale of every demo's training")
    ap.add_argument("--only", nargs="+", choices=sorted(DEMOS), default=list(DEMOS))
    args = ap.parse_args(argv)

    import dlx
    from dlx import plots

    if not plots.have_matplotlib():
        print("the demos draw pictures: pip install \"dlx[plots]\"", file=sys.stderr)
        return 1
    plt = plots._pyplot()
    dev = dlx.device(args.device)
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for name in args.only:
        dlx.manual_seed(0)
        fig, res = DEMOS[name](plt, dev, args.epochs)
        plots.save_figure(fig, os.path.join(args.out, f"{name}.png"), dpi=100, tight=False)
        results[name] = res
        print(f"{name:10s} {json.dumps(res)}")
    with open(os.path.join(args.out, "demos.json"), "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
