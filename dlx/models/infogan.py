"""InfoGAN on 28x28 digits (Chen et al., 2016): an unconditional DCGAN whose generator also
takes a categorical code c, one of ``num_codes`` drawn uniformly (no labels anywhere), and
whose discriminator has a second head, Q, that reads the code back from the image. Training
adds the cross-entropy of Q(G(z, c)) against c to both networks' losses (a lower bound on
the mutual information between c and the image; ``dlx.training.gan_step(..., codes=c)``),
so each code comes to draw one kind of image (on MNIST, mostly one digit each) and the
generator has a reason to draw a clean digit rather than a blend of two.

    g = InfoDCGANGenerator(num_codes=10); d = InfoDCGANDiscriminator(num_codes=10)
    fake = g(z, codes)            # codes (N,) integers 0..num_codes-1, drawn uniformly
    out = d(fake)                 # (N, 1 + num_codes): the real/fake score, then Q's code logits

Sampling draws the code uniformly too: the model is unconditional, the code a part of its
noise. Images in [-1, 1], as the DCGAN's (``dlx.models.dcgan``).
"""

from __future__ import annotations

from dlx import nn
from dlx._device import get_namespace
from dlx.models.conditional import ConditionalDCGANGenerator
from dlx.models.dcgan import dcgan_features, dcgan_init_

__all__ = ["InfoDCGANDiscriminator", "InfoDCGANGenerator"]


class InfoDCGANGenerator(ConditionalDCGANGenerator):
    """(z (N, latent_dim), codes (N,)) -> images (N, out_channels, 28, 28): the class-
    conditional generator (``ConditionalDCGANGenerator``) with the code in the label's place
    (``num_classes`` = ``num_codes``), so the code's learned embedding goes beside z."""

    def __init__(self, latent_dim: int = 100, num_codes: int = 10, embed_dim: int = 10,
                 channels: int = 64, out_channels: int = 1, dcgan_init: bool = True, device=None,
                 dtype=None):
        super().__init__(latent_dim, num_codes, embed_dim, channels, out_channels,
                         dcgan_init=dcgan_init, device=device, dtype=dtype)
        self.num_codes = num_codes


class InfoDCGANDiscriminator(nn.Module):
    """images (N, in_channels, 28, 28) -> (N, 1 + num_codes): column 0 is the DCGAN
    discriminator's score (``head``), the other columns Q's logits for the code (``q_head``),
    both linear in the shared features h = ``features(x)`` (``dcgan_features``). With
    ``spectral_norm`` the convolutions and the score head are spectrally normalised and
    BatchNorm is left out (as in SNGAN); Q's head is not (it is a classifier, not part of
    the critic whose slope spectral norm bounds). backward takes dL/d(output) (N, 1 +
    num_codes) and returns dL/dimages."""

    def __init__(self, num_codes: int = 10, channels: int = 64, in_channels: int = 1,
                 spectral_norm: bool = False, dcgan_init: bool = True, device=None, dtype=None):
        super().__init__()
        if not isinstance(num_codes, int) or num_codes < 2:
            raise ValueError(f"InfoDCGANDiscriminator: num_codes must be an int >= 2, got {num_codes!r}")
        kw = {"device": device, "dtype": dtype}
        sn = nn.utils.spectral_norm if spectral_norm else (lambda m: m)
        features = 2 * channels * 7 * 7
        self.num_codes = num_codes
        self.features = nn.Sequential(*dcgan_features(channels, in_channels, spectral_norm, **kw))
        self.head = sn(nn.Linear(features, 1, **kw))
        self.q_head = nn.Linear(features, num_codes, **kw)
        if dcgan_init and not spectral_norm:
            dcgan_init_(self)

    def forward(self, x):
        xp = get_namespace(x)
        h = self.features(x)
        return xp.concat([self.head(h), self.q_head(h)], axis=1)

    def backward(self, dy):
        dh = self.head.backward(dy[:, :1]) + self.q_head.backward(dy[:, 1:])
        return self.features.backward(dh)
