"""The published VOneNets, on the floor above the model: ``catalogue`` (one record per checkpoint, and
``get_model``), ``naming`` (the one rule from catalogue name to Brain-Score identifier), ``download``
(the weights cache) and ``checkpoints`` (reading and writing the published format). Light: nothing is
imported here.
"""
