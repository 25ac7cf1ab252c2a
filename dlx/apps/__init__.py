"""Applications built on the framework, each a subpackage with its method apart from its
pictures: ``digits`` (reading handwritten digits in a photo) and ``viz`` (seeing inside a
convnet). Nothing in the framework imports them; ``from dlx.apps import viz``."""
