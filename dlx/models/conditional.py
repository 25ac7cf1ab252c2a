"""Class-conditional DCGAN on 28x28 digits: the generator draws the digit it is asked for,
the discriminator judges an image as that digit (the projection discriminator of Miyato &
Koyama, 2018). Images in [-1, 1], as the unconditional DCGAN's (``dlx.models.dcgan``).

    g = ConditionalDCGANGenerator(); d = ConditionalDCGANDiscriminator(spectral_norm=True)
    fake = g(z, labels); score = d(fake, labels)      # labels (N,) integers 0..9
"""

from __future__ import annotations

from dlx import init, nn
from dlx._device import get_namespace
from dlx.models.dcgan import DCGANGenerator, dcgan_features, dcgan_init_

__all__ = ["ConditionalDCGANDiscriminator", "ConditionalDCGANGenerator"]


class ConditionalDCGANGenerator(nn.Module):
    """(z (N, latent_dim), labels (N,)) -> images (N, out_channels, 28, 28): the label's
    learned embedding (``embed_dim`` values) is put beside z and the pair goes through the
    DCGAN generator (``body``). backward returns dL/dz; the embedding learns from the rest."""

    def __init__(self, latent_dim: int = 100, num_classes: int = 10, embed_dim: int = 10,
                 channels: int = 64, out_channels: int = 1, dcgan_init: bool = True, device=None,
                 dtype=None):
        super().__init__()
        self.latent_dim, self.num_classes, self.embed_dim = latent_dim, num_classes, embed_dim
        self.embed = nn.Embedding(num_classes, embed_dim, device=device, dtype=dtype)
        self.body = DCGANGenerator(latent_dim + embed_dim, channels, out_channels,
                                   dcgan_init=dcgan_init, device=device, dtype=dtype)

    def forward(self, z, labels):
        xp = get_namespace(z)
        return self.body(xp.concat([z, self.embed(labels)], axis=1))

    def backward(self, dy):
        d = self.body.backward(dy)
        self.embed.backward(d[:, self.latent_dim:])
        return d[:, :self.latent_dim]


class ConditionalDCGANDiscriminator(nn.Module):
    """(images (N, in_channels, 28, 28), labels (N,)) -> one score per image (N, 1):
    h = features(x) (``dcgan_features``: the DCGAN discriminator's convolutions), score =
    head(h) + <embed(label), h>. With ``spectral_norm`` every convolution, the head and the
    embedding are spectrally normalised and BatchNorm is left out (as in SNGAN); else the
    DCGAN's BatchNorm is kept. backward returns dL/dimages."""

    def __init__(self, num_classes: int = 10, channels: int = 64, in_channels: int = 1,
                 spectral_norm: bool = False, dcgan_init: bool = True, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        c2 = 2 * channels
        sn = nn.utils.spectral_norm if spectral_norm else (lambda m: m)
        self.num_classes = num_classes
        self.features = nn.Sequential(*dcgan_features(channels, in_channels, spectral_norm, **kw))
        self.head = sn(nn.Linear(c2 * 7 * 7, 1, **kw))
        self.embed = sn(nn.Embedding(num_classes, c2 * 7 * 7, **kw))
        if dcgan_init and not spectral_norm:
            dcgan_init_(self)
            init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, x, labels):
        xp = get_namespace(x)
        h = self.features(x)
        e = self.embed(labels)
        self._keep((h, e))
        return self.head(h) + xp.sum(e * h, axis=1, keepdims=True)

    def backward(self, dy):
        h, e = self._pop()
        dh = self.head.backward(dy) + dy * e
        self.embed.backward(dy * h)
        return self.features.backward(dh)
