"""The V1 model itself: the VOneBlock, a fixed-weight model of primate V1, the first stage of a VOneNet.

In pipeline order: ``params`` samples the Gabor parameters from macaque V1 data, ``filters`` turns
them into the filter bank, ``block`` is the VOneBlock (its settings, ``VOneBlockConfig``, and the
simple and complex cells, gain and noise), ``noise`` the block's noise source and its seeding for
a whole model, ``inputs`` the checks every input passes first. ``accel/`` holds faster methods
that compute the same Gabor stage. Import from the defining modules (``vone.block`` ...): this
package file stays empty so that importing it costs nothing.
"""
