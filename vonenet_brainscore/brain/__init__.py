"""The brain model floor: VOneNets as Brain-Score ``BrainModel``s.

``model`` (``brain_model``, ``VOneNetBrainModel``) builds on ``commitments`` (the data in ``commitments/``),
``extraction`` (the activations model, with ``activation_cache``'s stale-cache guard) and ``v1_window``
(where the V1 property stimuli sit); ``brainscore_access`` is the one module that touches Brain-Score's
private attributes; ``plugin/`` renders and installs the Brain-Score plugin that carries this floor.
"""
