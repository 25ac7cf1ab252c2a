"""GANs on 28x28 digits: DCGAN (Radford et al., 2016) and MLP generators and discriminators.

Generators end in Tanh, so images are in [-1, 1]: feed real images the same way
(``Normalize((0.5,), (0.5,))`` on the loader's [0, 1] batches) and map samples back with
``(x + 1) / 2`` to show or score them. Discriminators output one logit per image, for
``nn.BCEWithLogitsLoss``. All four models are ``nn.Sequential``s, so their state dicts have
the names the same ``torch.nn.Sequential`` would give. The training loop is in
``dlx.training.gan``, the ``dlx gan`` command in ``dlx.cli.gan``.
"""

from __future__ import annotations

from dlx import init, nn

__all__ = [
    "GAN_MODELS", "DCGANDiscriminator", "DCGANGenerator", "MLPDiscriminator", "MLPGenerator",
    "dcgan_features", "dcgan_init_",
]


def dcgan_init_(model) -> None:
    """Radford et al.'s initialisation: conv and linear weights N(0, 0.02), BatchNorm
    weights N(1, 0.02), biases 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.affine:
            init.normal_(m.weight, 1.0, 0.02)
            init.zeros_(m.bias)


class DCGANGenerator(nn.Sequential):
    """z (N, latent_dim) -> images (N, out_channels, 28, 28) in [-1, 1]:

    Linear -> (2c, 7, 7) -> BN -> ReLU -> ConvT 4x4/2 -> (c, 14, 14) -> BN -> ReLU ->
    ConvT 4x4/2 -> (out_channels, 28, 28) -> Tanh, with c = ``channels`` (64).
    ``dcgan_init`` applies ``dcgan_init_`` (else PyTorch's default initialisation).
    """

    def __init__(self, latent_dim: int = 100, channels: int = 64, out_channels: int = 1,
                 dcgan_init: bool = True, device=None, dtype=None):
        kw = {"device": device, "dtype": dtype}
        c2 = 2 * channels
        super().__init__(
            nn.Linear(latent_dim, c2 * 7 * 7, bias=False, **kw),
            nn.Unflatten(1, (c2, 7, 7)),
            nn.BatchNorm2d(c2, **kw), nn.ReLU(),
            nn.ConvTranspose2d(c2, channels, 4, stride=2, padding=1, bias=False, **kw),
            nn.BatchNorm2d(channels, **kw), nn.ReLU(),
            nn.ConvTranspose2d(channels, out_channels, 4, stride=2, padding=1, **kw),
            nn.Tanh(),
        )
        self.latent_dim = latent_dim
        if dcgan_init:
            dcgan_init_(self)


def dcgan_features(channels: int, in_channels: int, spectral_norm: bool, **kw) -> list:
    """The DCGAN discriminator's convolutions, 28x28 -> (2c * 7 * 7,) features: Conv 4x4/2 ->
    LeakyReLU(0.2) -> Conv 4x4/2 -> BN -> LeakyReLU(0.2) -> Flatten; with ``spectral_norm``
    the convolutions are spectrally normalised and the BatchNorm left out (as in SNGAN)."""
    c2 = 2 * channels
    sn = nn.utils.spectral_norm if spectral_norm else (lambda m: m)
    layers = [sn(nn.Conv2d(in_channels, channels, 4, stride=2, padding=1, **kw)),
              nn.LeakyReLU(0.2),
              sn(nn.Conv2d(channels, c2, 4, stride=2, padding=1, bias=spectral_norm, **kw))]
    if not spectral_norm:
        layers.append(nn.BatchNorm2d(c2, **kw))
    return layers + [nn.LeakyReLU(0.2), nn.Flatten()]


class DCGANDiscriminator(nn.Sequential):
    """images (N, in_channels, 28, 28) -> one logit per image (N, 1): ``dcgan_features`` ->
    Linear, with c = ``channels`` (64). With ``spectral_norm`` the linear layer is
    spectrally normalised too (Miyato et al., 2018).
    """

    def __init__(self, channels: int = 64, in_channels: int = 1, dcgan_init: bool = True,
                 spectral_norm: bool = False, device=None, dtype=None):
        kw = {"device": device, "dtype": dtype}
        sn = nn.utils.spectral_norm if spectral_norm else (lambda m: m)
        super().__init__(*dcgan_features(channels, in_channels, spectral_norm, **kw),
                         sn(nn.Linear(2 * channels * 7 * 7, 1, **kw)))
        if dcgan_init and not spectral_norm:
            dcgan_init_(self)


class MLPGenerator(nn.Sequential):
    """The simple MLP GAN's generator: z (N, latent_dim) -> Linear/LeakyReLU(0.2) layers of
    ``hidden`` sizes -> Linear(784) -> Tanh -> (N, 1, 28, 28) in [-1, 1]."""

    def __init__(self, latent_dim: int = 100, hidden=(256, 512), device=None, dtype=None):
        kw = {"device": device, "dtype": dtype}
        layers, width = [], latent_dim
        for h in hidden:
            layers += [nn.Linear(width, h, **kw), nn.LeakyReLU(0.2)]
            width = h
        layers += [nn.Linear(width, 28 * 28, **kw), nn.Tanh(), nn.Unflatten(1, (1, 28, 28))]
        super().__init__(*layers)
        self.latent_dim = latent_dim


class MLPDiscriminator(nn.Sequential):
    """The simple MLP GAN's discriminator: (N, 1, 28, 28) -> Flatten -> Linear/LeakyReLU(0.2)
    layers of ``hidden`` sizes -> Linear(1), one logit per image."""

    def __init__(self, hidden=(512, 256), device=None, dtype=None):
        kw = {"device": device, "dtype": dtype}
        layers, width = [nn.Flatten()], 28 * 28
        for h in hidden:
            layers += [nn.Linear(width, h, **kw), nn.LeakyReLU(0.2)]
            width = h
        layers.append(nn.Linear(width, 1, **kw))
        super().__init__(*layers)


#: The ``dlx gan --model`` choices: name -> (generator class, discriminator class).
GAN_MODELS = {"dcgan": (DCGANGenerator, DCGANDiscriminator), "mlp": (MLPGenerator, MLPDiscriminator)}
