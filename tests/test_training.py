"""Checkpoints (dlx.save / dlx.load) and the training loop (dlx.fit, callbacks, resume)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import dlx
from dlx import nn, optim
from dlx.data import ArrayDataset, DataLoader
from dlx.testing import xp_assert_close
from dlx.training import flip_averaged_log_probs


def tiny_cnn(device="cpu"):
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, device=device), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * 4 * 4, 3, device=device))


def tiny_data(n=96, seed=0):
    """uint8 8x8 images whose class sets the brightness of one quadrant: learnable fast."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 60, (n, 1, 8, 8)).astype(np.uint8)
    for c in range(3):
        x[y == c, :, (c // 2) * 4:(c // 2) * 4 + 4, (c % 2) * 4:(c % 2) * 4 + 4] += 150
    return ArrayDataset(x, y)


def loader(device="cpu", seed=0, **kw):
    return DataLoader(tiny_data(), batch_size=16, shuffle=True, seed=seed, device=device, **kw)


# ---- save / load ----------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path, dev):
    m = tiny_cnn(dev)
    opt = optim.Adam(m.parameters(), lr=1e-2)
    dlx.fit(m, nn.CrossEntropyLoss(), opt, loader(dev), epochs=1, progress=False)
    path = dlx.save(tmp_path / "ck.npz", m, opt, epoch=1, note="hello")
    m2 = tiny_cnn(dev)
    opt2 = optim.Adam(m2.parameters(), lr=1e-2)
    meta = dlx.load(path, m2, opt2)
    assert meta == {"epoch": 1, "note": "hello"}
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        xp_assert_close(b, a, rtol=0, atol=0, err_msg=k)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for i in s1:
        assert s1[i]["step"] == s2[i]["step"]
        xp_assert_close(s2[i]["exp_avg"], s1[i]["exp_avg"], rtol=0, atol=0)


def test_checkpoint_moves_between_devices(tmp_path):
    pytest.importorskip("array_api_strict")
    m = tiny_cnn("cpu")
    opt = optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    dlx.fit(m, nn.CrossEntropyLoss(), opt, loader("cpu"), epochs=1, progress=False)
    dlx.save(tmp_path / "ck.npz", m, opt)
    m2 = tiny_cnn("strict")
    opt2 = optim.SGD(m2.parameters(), lr=0.1, momentum=0.9)
    dlx.load(tmp_path / "ck.npz", m2, opt2)
    assert m2.device == dlx.device("strict")
    assert all(dlx.device("strict").owns(s["momentum_buffer"]) for s in opt2.state.values())
    xp_assert_close(m2[5].weight.data, m[5].weight.data, rtol=0, atol=0)


def test_save_is_atomic(tmp_path, monkeypatch):
    m = tiny_cnn()
    path = tmp_path / "ck.npz"
    dlx.save(path, m, epoch=1)
    before = path.read_bytes()

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        dlx.save(path, m, epoch=2)
    assert path.read_bytes() == before  # the old checkpoint survives
    assert [p.name for p in tmp_path.iterdir()] == ["ck.npz"]  # no temporary file left
    with pytest.raises(TypeError, match="JSON-able"):
        dlx.save(tmp_path / "x.npz", m, bad=object())
    assert not (tmp_path / "x.npz").exists()


def test_load_errors(tmp_path):
    m = tiny_cnn()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dlx.load(tmp_path / "missing.npz", m)
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable dlx checkpoint"):
        dlx.load(tmp_path / "junk.npz", m)
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a dlx checkpoint"):
        dlx.load(tmp_path / "plain.npz", m)
    dlx.save(tmp_path / "ck.npz", m)
    other = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="missing keys: 0.bias|unexpected keys"):
        dlx.load(tmp_path / "ck.npz", other)
    with pytest.raises(ValueError, match="holds no optimizer state"):
        dlx.load(tmp_path / "ck.npz", m, optim.SGD(m.parameters(), lr=0.1))


def rewrite(path, edit_header=None, **arrays):
    """Rewrite the checkpoint at ``path`` with its header passed through ``edit_header``
    and ``arrays`` replacing entries: a file as another machine or a bad tool would write."""
    with np.load(path) as npz:
        entries = {k: npz[k] for k in npz.files}
    header = json.loads(str(entries["__meta__"]))
    if edit_header:
        edit_header(header)
    entries.update(arrays, __meta__=np.array(json.dumps(header)))
    np.savez(path, **entries)


def test_checkpoint_with_a_cuda_random_stream_loads_on_cpu(tmp_path):
    m = tiny_cnn()
    dlx.fit(m, nn.CrossEntropyLoss(), optim.SGD(m.parameters(), lr=0.1), loader(), epochs=1,
            progress=False)
    from dlx._random import generator

    generator("cpu").uniform((3,))  # make the cpu stream, so it is saved too
    path = dlx.save(tmp_path / "ck.npz", m)
    cpu_next = np.asarray(dlx.to_numpy(generator("cpu").uniform((3,))))
    cuda = {"bit_generator": "philox4x32-10-counter", "key": [1, 2], "counter": 7}
    rewrite(path, lambda h: h["rng_state"]["streams"].update({"cuda:0": cuda}))
    m2 = tiny_cnn()
    dlx.load(path, m2)  # as on a machine without a GPU: no DeviceError
    xp_assert_close(m2[5].weight.data, m[5].weight.data, rtol=0, atol=0)
    xp_assert_close(dlx.to_numpy(generator("cpu").uniform((3,))), cpu_next, rtol=0, atol=0)


def test_load_is_all_or_nothing_and_refuses_complex_weights(tmp_path):
    path = dlx.save(tmp_path / "ck.npz", tiny_cnn())
    rewrite(path, lambda h: h["rng_state"]["streams"].update({"cpu": {"bit_generator": "PCG64"}}))
    m = tiny_cnn()
    before = {k: np.array(dlx.to_numpy(v)) for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="malformed random state for stream 'cpu'.*nothing was"):
        dlx.load(path, m)
    for k, v in m.state_dict().items():
        xp_assert_close(dlx.to_numpy(v), before[k], rtol=0, atol=0, err_msg=k)
    dlx.load(path, m, restore_rng=False)  # the weights alone still load
    rewrite(path, **{"model/5.weight": np.full((3, 64), 1 + 2j, np.complex64)})
    with pytest.raises(ValueError, match="model/5.weight holds complex64 values.*only real"):
        dlx.load(path, tiny_cnn(), restore_rng=False)


def test_save_removes_what_killed_saves_left(tmp_path):
    import os
    import time

    stale = [tmp_path / ".tmp-ab12cd_9.npz", tmp_path / ".dlx-tmp-zz99yy00.npz"]
    fresh = tmp_path / ".dlx-tmp-fresh000.npz"  # may belong to a save in progress
    others = [tmp_path / ".tmp-notours.npz", tmp_path / "mine.tmp-ab12cd_9.npz",
              tmp_path / ".tmp-ab12cd_9.npz.bak"]
    old = time.time() - 3600
    for f in stale + [fresh] + others:
        f.write_bytes(b"partial")
        if f is not fresh:
            os.utime(f, (old, old))
    dlx.save(tmp_path / "ck.npz", tiny_cnn())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["ck.npz", fresh.name] + [f.name for f in others])


# ---- fit ----------------------------------------------------------------------------------------
def test_fit_learns_and_records_history(capsys):
    dlx.manual_seed(0)
    m = tiny_cnn()
    opt = optim.Adam(m.parameters(), lr=1e-2)
    sched = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    hist = dlx.fit(m, nn.CrossEntropyLoss(), opt, loader(), epochs=5,
                   val_loader=DataLoader(tiny_data(seed=1), batch_size=32), scheduler=sched,
                   progress=False)
    assert capsys.readouterr().out == ""  # progress=False prints nothing
    assert hist["epoch"] == [1, 2, 3, 4, 5]
    assert hist["lr"] == [1e-2, 1e-2, 5e-3, 5e-3, 2.5e-3]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "time_s", "images_per_s"} <= set(hist.history)
    assert hist["val_accuracy"][-1] > 0.9 and hist["loss"][-1] < hist["loss"][0]
    json.dumps(hist.to_dict())


def test_fit_progress_bar_shows_loss_and_throughput(capsys):
    m = tiny_cnn()
    dlx.fit(m, nn.CrossEntropyLoss(), optim.SGD(m.parameters(), lr=0.1), loader(), epochs=1)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "loss=" in err and "img/s=" in err


def test_early_stopping_and_checkpoints(tmp_path):
    m = tiny_cnn()
    opt = optim.SGD(m.parameters(), lr=0.0)  # nothing improves: stop after patience epochs
    ck = dlx.Checkpoint(tmp_path / "last.npz", every=1, keep_best=True, monitor="loss")
    es = dlx.EarlyStopping(monitor="loss", patience=2, min_delta=1.0)
    hist = dlx.fit(m, nn.CrossEntropyLoss(), opt, loader(), epochs=20, callbacks=[ck, es],
                   progress=False)
    assert len(hist) == 3 and es.stopped_epoch == 3
    assert (tmp_path / "last.npz").exists() and (tmp_path / "last.best.npz").exists()
    meta = dlx.load(tmp_path / "last.npz", tiny_cnn())
    assert meta["epoch"] == 3 and len(meta["history"]["loss"]) == 3


def test_nan_loss_stops_with_epoch_and_step_and_keeps_checkpoint(tmp_path):
    m = tiny_cnn()
    opt = optim.SGD(m.parameters(), lr=0.1)

    class Poison(dlx.Callback):  # after epoch 2 a weight becomes NaN, as in a blow-up
        def on_epoch_end(self, epoch, logs, state):
            if epoch == 1:
                m[5].weight.data = m[5].weight.data * float("nan")

    ck = dlx.Checkpoint(tmp_path / "ck.npz")
    with pytest.raises(FloatingPointError, match=r"loss became nan at epoch 3, step 1.*ck\.npz"):
        dlx.fit(m, nn.CrossEntropyLoss(), opt, loader(), epochs=5, callbacks=[ck, Poison()],
                progress=False)
    meta = dlx.load(tmp_path / "ck.npz", tiny_cnn())
    assert meta["epoch"] == 2 and all(np.isfinite(meta["history"]["loss"]))


class PoisonAt(optim.SGD):
    """SGD whose ``at``-th step leaves a NaN weight, as a blow-up in one step would."""

    def __init__(self, params, at, **kw):
        super().__init__(params, **kw)
        self.at, self.calls = at, 0

    def step(self):
        super().step()
        self.calls += 1
        if self.calls == self.at:
            p = self.param_groups[0]["params"][0]
            p.data = p.data * float("nan")


def test_weights_broken_by_the_last_step_of_an_epoch_are_not_checkpointed(tmp_path):
    m = tiny_cnn()
    opt = PoisonAt(m.parameters(), at=12, lr=0.1)  # 6 steps an epoch: the last of epoch 2
    ck = dlx.Checkpoint(tmp_path / "ck.npz", keep_best=True, monitor="loss")
    with pytest.raises(FloatingPointError, match=r"NaN or infinite in the last step of epoch 2"
                                                 r".*good checkpoint is .*ck\.npz"):
        dlx.fit(m, nn.CrossEntropyLoss(), opt, loader(), epochs=4, callbacks=[ck], progress=False)
    for path in (tmp_path / "ck.npz", tmp_path / "ck.best.npz"):
        m2 = tiny_cnn()
        assert dlx.load(path, m2)["epoch"] == 1
        assert all(np.isfinite(dlx.to_numpy(v)).all() for v in m2.state_dict().values())
    m3 = tiny_cnn()
    with pytest.raises(FloatingPointError, match="epoch 1 .*no checkpoint was written"):
        dlx.fit(m3, nn.CrossEntropyLoss(), PoisonAt(m3.parameters(), at=6, lr=0.1), loader(),
                epochs=2, callbacks=[dlx.Checkpoint(tmp_path / "new.npz")], progress=False)
    assert not (tmp_path / "new.npz").exists()


def test_bad_fit_arguments():
    m = tiny_cnn()
    opt = optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        dlx.fit(m, nn.CrossEntropyLoss(), opt, loader(), epochs=0)
    with pytest.raises(ValueError, match="unknown metrics"):
        dlx.fit(m, nn.CrossEntropyLoss(), opt, loader(), epochs=1, metrics=("f1",))


# ---- resume in a new process is bit-identical ----------------------------------------------------
RESUME_SCRIPT = textwrap.dedent('''
    import sys
    import numpy as np
    import dlx
    from dlx import nn, optim
    sys.path.insert(0, {tests!r})
    from test_training import tiny_cnn, loader
    from dlx.data import transforms as T

    mode, path, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    dlx.manual_seed(0)
    model = tiny_cnn()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    train = loader(transform=T.Compose([T.RandomCrop(8, padding=1), T.RandomHorizontalFlip()]))
    start, history = 0, None
    if mode == "resume":
        meta = dlx.load(path, model, opt)
        sched.load_state_dict(meta["scheduler"])
        start, history = meta["epoch"], meta["history"]
    dlx.fit(model, nn.CrossEntropyLoss(), opt, train, epochs=epochs, scheduler=sched,
            callbacks=[dlx.Checkpoint(path)], progress=False, initial_epoch=start, history=history)
''')


def test_resume_in_new_process_is_bit_identical(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT.format(tests=str(__import__("pathlib").Path(__file__).parent)))

    def run(*args):
        subprocess.run([sys.executable, str(script), *map(str, args)], check=True)

    run("fresh", tmp_path / "full.npz", 4)
    run("fresh", tmp_path / "part.npz", 2)
    run("resume", tmp_path / "part.npz", 4)
    full, part = dlx.serialization.read(tmp_path / "full.npz"), dlx.serialization.read(tmp_path / "part.npz")
    assert full[0]["meta"]["epoch"] == part[0]["meta"]["epoch"] == 4
    assert full[0]["meta"]["history"]["loss"] == part[0]["meta"]["history"]["loss"]
    assert full[1].keys() == part[1].keys()
    for k in full[1]:
        np.testing.assert_array_equal(full[1][k], part[1][k], err_msg=k)


# ---- test-time augmentation -------------------------------------------------------------------
def test_flip_tta_is_the_mean_of_the_two_softmaxes(dev):
    m = tiny_cnn(dev)
    m.eval()
    x = np.random.default_rng(1).standard_normal((5, 1, 8, 8)).astype(np.float32)

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    plain = dlx.to_numpy(m(dlx.asarray(x, device=dev)))
    mirrored = dlx.to_numpy(m(dlx.asarray(np.ascontiguousarray(x[..., ::-1]), device=dev)))
    assert not np.allclose(plain, mirrored)  # the model is not mirror-symmetric
    expected = np.log((softmax(plain) + softmax(mirrored)) / 2)
    got = flip_averaged_log_probs(m, dlx.asarray(x, device=dev))
    xp_assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_evaluate_with_flip_tta():
    m = tiny_cnn()
    dlx.fit(m, nn.CrossEntropyLoss(), optim.Adam(m.parameters(), lr=0.01), loader(), epochs=2,
            progress=False)
    data = DataLoader(tiny_data(64, seed=5), batch_size=16)
    logs = dlx.evaluate(m, nn.CrossEntropyLoss(), data, flip_tta=True)
    m.eval()
    nll, right = [], []
    for x, y in data:
        logp = dlx.to_numpy(flip_averaged_log_probs(m, x))
        nll.append(-logp[np.arange(len(y)), dlx.to_numpy(y)])
        right.append(logp.argmax(axis=1) == dlx.to_numpy(y))
    assert np.isclose(logs["loss"], np.concatenate(nll).mean(), rtol=1e-5)
    assert logs["accuracy"] == np.concatenate(right).mean()
    assert logs != dlx.evaluate(m, nn.CrossEntropyLoss(), data)  # mirroring changed the scores


def test_epoch_line_reads_like_keras(capsys):
    import re

    from dlx.training.supervised import epoch_line

    logs = {"epoch": 3, "loss": 1.23451, "accuracy": 0.56781, "lr": 6.699e-05, "time_s": 5.234,
            "images_per_s": 10820.4, "val_loss": 1.3, "val_accuracy": 0.5}
    assert epoch_line(logs, 10) == ("epoch 3/10 - 5.2 s - loss 1.2345 - accuracy 0.5678 - val_loss "
                                    "1.3000 - val_accuracy 0.5000 - 10,820 img/s - lr 6.7e-05")
    m = tiny_cnn()
    val = DataLoader(tiny_data(seed=1), batch_size=32)
    dlx.fit(m, nn.CrossEntropyLoss(), optim.SGD(m.parameters(), lr=0.1), loader(), epochs=1,
            val_loader=val)
    out = capsys.readouterr().out
    assert re.search(r"^epoch 1/1 - [\d.]+ s - loss [\d.]+ - accuracy [\d.]+ - val_loss [\d.]+ - "
                     r"val_accuracy [\d.]+ - [\d,]+ img/s - lr 0.1$", out, re.M), out
    assert "images_per_s" not in out and "time_s" not in out


def test_a_first_step_that_compiles_is_said_and_not_counted(capsys):
    """A fresh install's first step waits for its kernels to compile: one line says so, and
    the epoch's time, its images/s and the bar's rate start after it."""
    m = tiny_cnn()
    forward = m.forward
    calls = []

    def slow_first(x):
        if not calls:
            time.sleep(1.3)  # what compiling the CPU kernels looks like from fit's side
        calls.append(1)
        return forward(x)

    object.__setattr__(m, "forward", slow_first)
    hist = dlx.fit(m, nn.CrossEntropyLoss(), optim.SGD(m.parameters(), lr=0.1), loader(), epochs=2)
    out = "".join(capsys.readouterr())
    assert out.count("compiling kernels (first run with this install only") == 1
    assert hist["time_s"][0] < 1.0 and hist["images_per_s"][0] > 0
    # a warm run says nothing
    dlx.fit(tiny_cnn(), nn.CrossEntropyLoss(), optim.SGD(m.parameters(), lr=0.1), loader(), epochs=1)
    assert "compiling" not in "".join(capsys.readouterr())


def test_a_cold_kernel_cache_is_announced(tmp_path):
    """With nothing in Numba's cache (a fresh install) the CPU backend says the first step
    will compile; once a kernel is cached it says nothing."""
    code = "import dlx; print(dlx.device('cpu').backend.compile_note())"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "empty")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert "compiling the CPU kernels" in out.stdout, out.stderr
    dev = dlx.device("cpu")
    x = dev.asarray(np.ones((1, 1, 6, 6)), dtype="float32")
    w = dev.asarray(np.ones((2, 1, 3, 3)), dtype="float32")
    dev.backend.conv2d(x, w, None, (1, 1), (0, 0), (1, 1))  # compiles (or loads) and caches
    assert dev.backend.compile_note() is None
