"""state_dict / load_state_dict, requires_grad_, to(), train/eval and Sequential plumbing."""

from __future__ import annotations

import numpy as np
import pytest

import dlx
from dlx import nn, optim
from dlx.testing import xp_assert_close


def small_cnn(device=None):
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, device=device), nn.BatchNorm2d(4, device=device), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 3, device=device),
    )


def test_state_dict_names_match_pytorch():
    m = small_cnn()
    assert list(m.state_dict()) == [
        "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
        "1.num_batches_tracked", "5.weight", "5.bias",
    ]
    assert [n for n, _ in m.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias",
                                                    "5.weight", "5.bias"]


def test_round_trip_between_models(dev):
    a, b = small_cnn(dev), small_cnn(dev)
    dlx.manual_seed(1)
    x = dlx.asarray(np.random.default_rng(0).standard_normal((2, 1, 8, 8)), device=dev)
    a(x)  # updates running stats
    missing, unexpected = b.load_state_dict(a.state_dict())
    assert missing == [] and unexpected == []
    a.eval(), b.eval()
    xp_assert_close(b(x), a(x), rtol=0, atol=0)
    # loaded arrays are copies, not aliases
    a.state_dict()["0.weight"][...] = 0
    assert float(dlx.to_numpy(b.state_dict()["0.weight"]).std()) > 0


def test_load_accepts_numpy_and_other_devices():
    pytest.importorskip("array_api_strict")
    a = small_cnn("cpu")
    host = {k: dlx.to_numpy(v) for k, v in a.state_dict().items()}
    b = small_cnn("strict")
    b.load_state_dict(host)
    assert b.device == dlx.device("strict")
    xp_assert_close(b.state_dict()["5.weight"], host["5.weight"], rtol=0, atol=0)


def test_load_lists_every_problem_and_loads_nothing():
    a = small_cnn()
    sd = {k: dlx.to_numpy(v) for k, v in a.state_dict().items()}
    del sd["0.bias"]
    sd["extra.weight"] = np.zeros(3)
    sd["5.weight"] = np.zeros((3, 5), np.float32)
    b = small_cnn()
    before = dlx.to_numpy(b.state_dict()["0.weight"]).copy()
    with pytest.raises(ValueError) as err:
        b.load_state_dict(sd)
    msg = str(err.value)
    assert "missing keys: 0.bias" in msg and "unexpected keys: extra.weight" in msg
    assert "5.weight: checkpoint has shape (3, 5), model has (3, 64)" in msg
    assert "nothing was loaded" in msg
    np.testing.assert_array_equal(dlx.to_numpy(b.state_dict()["0.weight"]), before)
    with pytest.raises(ValueError, match="shape mismatches"):
        b.load_state_dict(sd, strict=False)
    sd["5.weight"] = np.zeros((3, 64), np.float32)
    missing, unexpected = b.load_state_dict(sd, strict=False)
    assert missing == ["0.bias"] and unexpected == ["extra.weight"]


def test_requires_grad_false_still_returns_dx():
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    m.requires_grad_(False)
    x = dlx.asarray(np.ones((5, 3)))
    y = m(x)
    dx = m.backward(dlx.asarray(np.ones(tuple(y.shape))))
    assert dx.shape == (5, 3)
    assert all(p.grad is None for p in m.parameters())
    m.requires_grad_(True)
    m(x)
    m.backward(dlx.asarray(np.ones((5, 2))))
    assert all(p.grad is not None for p in m.parameters())


def test_gradients_accumulate_and_zero_grad():
    m = nn.Linear(3, 2)
    x = dlx.asarray(np.ones((4, 3)))
    m(x)
    m.backward(dlx.asarray(np.ones((4, 2))))
    g1 = dlx.to_numpy(m.weight.grad).copy()
    m(x)
    m.backward(dlx.asarray(np.ones((4, 2))))
    np.testing.assert_allclose(dlx.to_numpy(m.weight.grad), 2 * g1)
    m.zero_grad()
    assert m.weight.grad is None


def test_to_moves_and_casts(dev):
    m = small_cnn("cpu").to(dev)
    assert all(dev.owns(p.data) for p in m.parameters())
    assert all(dev.owns(b) for b in m.buffers())
    m.double()
    assert m.dtype == "float64" and "int64" in str(m.state_dict()["1.num_batches_tracked"].dtype)
    m.to("float32")
    assert m.dtype == "float32"


def test_train_eval_propagates():
    m = small_cnn()
    m.eval()
    assert not any(x.training for x in m.modules())
    m.train()
    assert all(x.training for x in m.modules())


def test_sequential_indexing_and_repr():
    m = small_cnn()
    assert len(m) == 6 and isinstance(m[0], nn.Conv2d) and len(m[1:3]) == 2
    assert "Conv2d(1, 4, kernel_size=(3, 3)" in repr(m)
    with pytest.raises(TypeError, match="not a Module"):
        nn.Sequential(nn.ReLU(), 3)


def test_backward_without_input_grad_gives_the_same_parameter_grads(dev):
    """fit's backward(dy, input_grad=False): the first layer skips dx, grads are unchanged."""
    x = dlx.asarray(np.random.default_rng(0).standard_normal((2, 1, 8, 8)), device=dev)
    grads = []
    for input_grad in (True, False):
        dlx.manual_seed(0)
        m = small_cnn(dev)
        y = m(x)
        dx = m.backward(dlx.asarray(np.ones(tuple(y.shape)), device=dev), input_grad=input_grad)
        assert (dx is None) == (not input_grad)
        grads.append([dlx.to_numpy(p.grad) for p in m.parameters()])
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)
    relu_first = nn.Sequential(nn.ReLU(), nn.Linear(3, 2))  # cannot skip: returns dx anyway
    relu_first(dlx.asarray(np.ones((4, 3))))
    assert relu_first.backward(dlx.asarray(np.ones((4, 2))), input_grad=False).shape == (4, 3)


# ---- hostile checkpoint files (dlx.load / dlx eval): one line naming the file and the fault ----
def _entries(path):
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


def _npy_member(header: dict, data: bytes) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def _crafted(tmp_path, case):
    import json
    import zipfile

    path = tmp_path / f"{case}.npz"
    dlx.save(path, small_cnn(), optim.SGD(small_cnn().parameters(), lr=0.1, momentum=0.9))
    entries = _entries(path)
    header = json.loads(str(entries["__meta__"]))
    if case == "meta-list":
        header["meta"] = [1, 2]
    elif case == "__meta__-list":
        header = [header]
    elif case == "scalars-missing":
        del header["optimizer"]["scalars"]
    elif case == "deep-json":
        header["meta"] = {"x": "@"}
    elif case == "structured":
        entries["model/5.bias"] = np.zeros(3, [("a", "<f4"), ("b", "<i4")])
    elif case == "__meta__-number":
        entries["__meta__"] = np.arange(3)
    text = json.dumps(header).replace('"@"', "[" * 100_000 + "]" * 100_000)
    if case != "__meta__-number":
        entries["__meta__"] = np.array(text)
    if case == "lying-size":
        del entries["model/5.bias"]
    np.savez(path, **entries)
    if case == "lying-size":  # model/5.bias declares 3 GB in a file of a few KB
        with zipfile.ZipFile(path, "a") as z:
            z.writestr("model/5.bias.npy", _npy_member(
                {"descr": "<f4", "fortran_order": False, "shape": (750_000_000,)}, bytes(12)))
    return path


CRAFTED = [
    ("meta-list", "meta is a list, expected a dict"),
    ("__meta__-list", "__meta__ entry is a JSON list, not an object"),
    ("scalars-missing", "optimizer.scalars is missing"),
    ("deep-json", "__meta__ JSON is nested too deeply"),
    ("structured", "'model/5.bias' has the structured or object dtype"),
    ("__meta__-number", r"__meta__ entry is int64 of shape \(3,\), not one JSON text"),
    ("lying-size", r"'model/5.bias' declares shape \(750000000,\) of float32 \(3,000,000,000 bytes\)"),
]


@pytest.mark.parametrize("case, pattern", CRAFTED, ids=[c for c, _ in CRAFTED])
def test_crafted_checkpoints_are_refused_in_one_line(case, pattern, tmp_path, capsys):
    import re

    from dlx.cli import main

    path = _crafted(tmp_path, case)
    m = small_cnn()
    damaged = re.escape(repr(str(path))) + " is a damaged dlx checkpoint: .*"
    with pytest.raises(ValueError, match=damaged + pattern):
        dlx.load(path, m, optim.SGD(m.parameters(), lr=0.1, momentum=0.9))
    assert main(["eval", str(path), "--dataset", "mnist"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and str(path) in err, err
    assert re.search(pattern, err), err


@pytest.mark.parametrize("content", [b"\x80\x04K\x01.", np.lib.format.MAGIC_PREFIX + b"\x01\x00junk",
                                     b"hello, this is a text file\n"])
def test_a_file_renamed_npz_is_not_a_checkpoint_and_no_unsafe_advice(content, tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(content)  # a pickle, an .npy, a text file
    with pytest.raises(ValueError) as e:
        dlx.load(path, small_cnn())
    assert "is not a readable dlx checkpoint: not an .npz archive" in str(e.value)
    assert "pickle" not in str(e.value).lower().replace(repr(content[:4]).lower(), "")


def test_only_the_entries_dlx_uses_are_read_and_each_once(tmp_path, monkeypatch, capsys):
    """An extra entry declaring 3 GB is never read, and `dlx eval` reads each array once."""
    import zipfile

    from dlx import serialization
    from dlx.cli import main
    from dlx.models import LeNet5

    path = tmp_path / "model.npz"
    dlx.save(path, LeNet5(in_channels=1, padding=2), dataset="mnist", architecture="lenet5")
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("notes.npy", _npy_member({"descr": "|u1", "fortran_order": False,
                                             "shape": (3_000_000_000,)}, bytes(10)))
    reads = []
    real = serialization._Archive.array
    monkeypatch.setattr(serialization._Archive, "array", lambda self, k: reads.append(k) or real(self, k))
    m = LeNet5(in_channels=1, padding=2)
    dlx.load(path, m)
    model_keys = [f"model/{k}" for k in m.state_dict()]
    assert "notes" not in reads and sorted(reads) == sorted(["__meta__", *model_keys])
    reads.clear()
    assert main(["eval", str(path), "--data-dir", str(tmp_path / "none")]) == 1  # stops at the data
    assert "MNIST not found" in capsys.readouterr().err
    assert sorted(k for k in reads if k != "__meta__") == sorted(model_keys)


def test_optimizer_arrays_of_the_wrong_shape_are_refused_unread(tmp_path):
    a = small_cnn()
    opt = optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    a(dlx.asarray(np.ones((2, 1, 8, 8), np.float32)))
    for p in a.parameters():
        p.grad = p.data * 0 + 1
    opt.step()
    path = dlx.save(tmp_path / "ck.npz", a, opt)
    entries = _entries(path)
    entries["optimizer/0/momentum_buffer"] = np.zeros((7, 7), np.float32)
    np.savez(path, **entries)
    b = small_cnn()
    with pytest.raises(ValueError, match=r"optimizer/0/momentum_buffer has shape \(7, 7\) but "
                                         r"parameter 0 has shape \(4, 1, 3, 3\)"):
        dlx.load(path, b, optim.SGD(b.parameters(), lr=0.1, momentum=0.9))
