"""Uses of a model: ImageNet-style validation and training on an image folder.

The steps, in pipeline order: recipe.py (the original recipe's defaults; imports nothing heavy, so the
command line reads it for ``--help``), data.py (the image folder and its transforms), models.py (the
network to train and its classifier), evaluate.py (``validate``), resume.py (what a resumed run keeps),
distributed.py (``torchrun`` processes), train.py (``train``).
"""
