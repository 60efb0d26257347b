"""Scoring a brain model, on the floor of the uses of a model: ``recordings`` (a user's own data),
``predictivity`` (Brain-Score's neural benchmarks on them), ``mapping`` (every layer on every region) and
``v1_properties`` (the offline Marques2020 suite). Light: each module is imported where it is used.
"""
