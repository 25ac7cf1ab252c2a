"""Ready-made architectures with PyTorch's state-dict names (most are ``nn.Sequential``s):
``LeNet5``, ``MLP``, ``ConvNet``, and the GAN generators and discriminators (DCGAN, MLP,
class-conditional DCGAN, InfoGAN). Architectures only: training loops are in
``dlx.training``, commands in ``dlx.cli``."""

from dlx.models.conditional import ConditionalDCGANDiscriminator, ConditionalDCGANGenerator
from dlx.models.convnet import ConvNet
from dlx.models.dcgan import (
    GAN_MODELS,
    DCGANDiscriminator,
    DCGANGenerator,
    MLPDiscriminator,
    MLPGenerator,
    dcgan_init_,
)
from dlx.models.infogan import InfoDCGANDiscriminator, InfoDCGANGenerator
from dlx.models.lenet import LeNet5
from dlx.models.mlp import MLP

__all__ = [
    "ConditionalDCGANDiscriminator", "ConditionalDCGANGenerator", "ConvNet", "GAN_MODELS",
    "DCGANDiscriminator", "DCGANGenerator", "InfoDCGANDiscriminator", "InfoDCGANGenerator",
    "LeNet5", "MLP", "MLPDiscriminator", "MLPGenerator",
    "dcgan_init_",
]
