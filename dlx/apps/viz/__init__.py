"""Seeing inside a convnet (Zeiler & Fergus 2014; Simonyan et al. 2014): first-layer
filters, feature maps, saliency, activation maximisation and occlusion sensitivity
(``methods``, on the model's device), and their pictures (``plots``, matplotlib).

    from dlx.apps import viz
    sal = viz.saliency(model, x, labels)
    viz.plot_saliency(viz.to_display(x, MEAN, STD), sal, "saliency.png")
"""

from dlx.apps.viz.methods import (
    activation_maximisation,
    feature_maps,
    first_layer_filters,
    input_gradient,
    occlusion,
    saliency,
)
from dlx.apps.viz.plots import (
    plot_activation_maximisation,
    plot_feature_maps,
    plot_filters,
    plot_occlusion,
    plot_saliency,
    to_display,
)

__all__ = [
    "activation_maximisation", "feature_maps", "first_layer_filters", "input_gradient",
    "occlusion", "plot_activation_maximisation", "plot_feature_maps", "plot_filters",
    "plot_occlusion", "plot_saliency", "saliency", "to_display",
]
