"""Scores for generative models: Inception score and Fréchet distance (host NumPy, float64),
and ``classifier_scores`` that computes them with a trained MNIST classifier (LeNet-5)
in place of the Inception network.

    is_gen, logits_gen = classifier_scores(lenet, fake_images, device="cpu")   # images in [0, 1]
    _, logits_real = classifier_scores(lenet, real_images, device="cpu")
    fd = frechet_distance(logits_gen, logits_real)
"""

from __future__ import annotations

import numpy as np

from dlx._grad_mode import no_grad
from dlx.nn import functional as F

__all__ = ["classifier_scores", "code_purity", "frechet_distance", "inception_score", "softmax"]

#: Mean and std of the MNIST training pixels, as the classifier was trained with.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def softmax(logits) -> np.ndarray:
    """Row-wise softmax of (N, C) logits, float64 (``F.softmax`` of the float64 copy)."""
    return F.softmax(np.asarray(logits, dtype=np.float64), dim=1)


def inception_score(probs, splits: int = 1, return_std: bool = False):
    """exp(E_x KL(p(y|x) || p(y))) of class probabilities ``probs`` (N, C), rows summing to 1.

    1 when every sample gets the same prediction; C when the predictions are confident and
    spread evenly over C classes. With ``splits`` > 1 the samples are cut into that many
    equal parts and the mean score over the parts is returned (Salimans et al., 2016), with
    its standard deviation as well if ``return_std``.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"inception_score: expected probabilities of shape (N, C), got {p.shape}")
    if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("inception_score: rows must be probabilities (non-negative, summing to "
                         "1); apply dlx.metrics.softmax to logits first")
    if not 1 <= splits <= p.shape[0]:
        raise ValueError(f"inception_score: splits must be in 1..{p.shape[0]}, got {splits}")
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(axis=0, keepdims=True)
        # 0 * log 0 = 0: only terms with p > 0 count.
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(part > 0, part * (np.log(part) - np.log(marginal)), 0.0)
        scores.append(float(np.exp(terms.sum(axis=1).mean())))
    mean = float(np.mean(scores))
    return (mean, float(np.std(scores))) if return_std else mean


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigh)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _trace_sqrt_product(ca: np.ndarray, cb: np.ndarray, method: str) -> float:
    """Tr sqrt(Ca Cb)."""
    if method == "auto":
        try:
            import scipy.linalg  # noqa: F401

            method = "scipy"
        except ImportError:
            method = "eigh"
    if method == "scipy":
        import scipy.linalg

        covmean = scipy.linalg.sqrtm(ca @ cb)
        if not np.all(np.isfinite(covmean)):  # singular product: nudge it (as pytorch-fid does)
            offset = np.eye(ca.shape[0]) * 1e-6
            covmean = scipy.linalg.sqrtm((ca + offset) @ (cb + offset))
        return float(np.trace(np.real(covmean)))
    if method == "eigh":
        # Ca Cb is similar to Ca^1/2 Cb Ca^1/2 (symmetric PSD), so their square roots
        # have the same trace: the sum of the square roots of its eigenvalues.
        s = _sqrtm_psd(ca)
        m = s @ cb @ s
        w = np.linalg.eigvalsh((m + m.T) / 2)
        return float(np.sqrt(np.clip(w, 0.0, None)).sum())
    raise ValueError(f"frechet_distance: method must be 'auto', 'scipy' or 'eigh', got {method!r}")


def frechet_distance(feats_a, feats_b, method: str = "auto") -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D):

        ||mu_a - mu_b||² + Tr(Ca + Cb - 2 sqrt(Ca Cb))

    (FID when the features are Inception activations; here usually classifier logits).
    ``method``: "scipy" (``scipy.linalg.sqrtm``), "eigh" (NumPy only, via the symmetric
    Ca^1/2 Cb Ca^1/2) or "auto" (scipy when it is installed).
    """
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: expected feature sets (N, D) and (M, D), got "
                         f"{a.shape} and {b.shape}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("frechet_distance: each set needs at least 2 samples for a covariance")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    ca = np.atleast_2d(np.cov(a, rowvar=False))
    cb = np.atleast_2d(np.cov(b, rowvar=False))
    diff = mu_a - mu_b
    tr = _trace_sqrt_product(ca, cb, method)
    return float(diff @ diff + np.trace(ca) + np.trace(cb) - 2.0 * tr)


def code_purity(codes, classes) -> float:
    """How far each of an unsupervised generator's codes (InfoGAN) draws one class: the share
    of samples whose class (read by a classifier) is the one most often read for their
    code. 1.0: every code draws a single class; codes that split or share classes still
    score high, so read it beside the class frequencies."""
    codes, classes = np.asarray(codes).ravel(), np.asarray(classes).ravel()
    if codes.shape != classes.shape or codes.size == 0:
        raise ValueError(f"code_purity: codes and classes must be two equally long, non-empty "
                         f"sequences, got {codes.shape} and {classes.shape}")
    hits = sum(int(np.bincount(classes[codes == c]).max()) for c in np.unique(codes))
    return hits / codes.size


def classifier_scores(classifier, images, batch_size: int = 500, device=None):
    """(Inception score, logits) of ``images`` under a trained MNIST classifier.

    ``images``: (N, 1, 28, 28) in [0, 1] (host or device array); they are normalised as the
    classifier saw MNIST in training, ``(x - 0.1307) / 0.3081``. ``classifier``: e.g. a
    ``dlx.models.LeNet5(in_channels=1, padding=2)`` loaded with ``dlx.load``; it is run in
    eval mode (and put back in the mode it was in). Returns the score (float) and the
    logits as a float64 NumPy array (N, num_classes), for ``frechet_distance``.
    """
    from dlx._device import device as _device
    from dlx._device import to_numpy

    dev = _device(device) if device is not None else (classifier.device or _device())
    n = int(images.shape[0])
    if n == 0:
        raise ValueError("classifier_scores: no images")
    if batch_size < 1:
        raise ValueError(f"classifier_scores: batch_size must be positive, got {batch_size}")
    was_training = classifier.training
    classifier.eval()
    out = []
    try:
        for lo in range(0, n, batch_size):
            x = dev.asarray(images[lo:min(lo + batch_size, n), ...], dtype="float32")
            with no_grad():
                out.append(to_numpy(classifier((x - MNIST_MEAN) / MNIST_STD)).astype(np.float64))
    finally:
        classifier.train(was_training)
    logits = np.concatenate(out)
    return inception_score(softmax(logits)), logits
