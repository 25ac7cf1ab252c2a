"""Handwritten digits in a photo: find each digit on a page, cut it out the way MNIST's
digits were made, read it with an MNIST-trained model (``reader``, NumPy), and draw the
readings or make test pages (``pictures``, Pillow and matplotlib).

    from dlx.apps import digits
    image = digits.load_image("page.jpg")
    results = digits.read_digits(image, digits.load_mnist_model("model.npz"))
    digits.annotate(image, results, "annotated.png")
"""

from dlx.apps.digits import pictures, reader
from dlx.apps.digits.pictures import (
    PLOTS_HINT,
    annotate,
    load_image,
    save_image,
    score_page,
    synthetic_page,
)
from dlx.apps.digits.reader import (
    MNIST_MEAN,
    MNIST_STD,
    as_grey,
    background,
    classify,
    find_digits,
    gaussian_blur,
    ink_map,
    ink_threshold,
    label_components,
    lines,
    load_mnist_model,
    otsu_threshold,
    read_digits,
    resize,
)

__all__ = [
    "MNIST_MEAN", "MNIST_STD", "PLOTS_HINT", "annotate", "as_grey", "background", "classify",
    "find_digits", "gaussian_blur", "ink_map", "ink_threshold", "label_components", "lines",
    "load_image", "load_mnist_model", "otsu_threshold", "pictures", "read_digits", "reader",
    "resize", "save_image", "score_page", "synthetic_page",
]
