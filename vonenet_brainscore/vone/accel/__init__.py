"""Faster ways to compute the VOneBlock's Gabor stage, each giving the outputs of its reference
method 'dense' (the original's two convolutions, in ``vone/block.py``) to float32 rounding.

- ``grouped``: each filter applied to the one colour channel it reads, as per-channel grouped
  matrix products, and the odd-phase filters for complex cells only.
- ``spectral``: the strided correlations as folded-spectrum products and small inverse FFTs.
- ``compiled``: the spectral arithmetic and the cells in one C call per batch (CPU inference).
- ``native``: building, checking and loading ``kernels.c``, which ``compiled`` calls.

``VOneBlock.method`` names them ('auto' picks the fastest that applies); the filters' colour
grouping and the output-size rule they share live in ``vone/filters.py``.
"""
