"""Brain-Score's per-plugin model functions, delegating to the ``vonenet_brainscore`` package.

``get_model`` returns the activations model (a ``PytorchWrapper``) of a registered identifier,
``get_layers`` its candidate layers (from ``commitments/``), ``get_bibtex`` the paper.
"""
from vonenet_brainscore.brain import IDENTIFIERS, brain_model, spec
from vonenet_brainscore.commitments_io import load_commitment

BIBTEX = """@inproceedings{NEURIPS2020_98b17f06,
 author = {Dapello, Joel and Marques, Tiago and Schrimpf, Martin and Geiger, Franziska and Cox, David and DiCarlo, James J},
 booktitle = {Advances in Neural Information Processing Systems},
 editor = {H. Larochelle and M. Ranzato and R. Hadsell and M.F. Balcan and H. Lin},
 pages = {13073--13087},
 publisher = {Curran Associates, Inc.},
 title = {Simulating a Primary Visual Cortex at the Front of CNNs Improves Robustness to Image Perturbations},
 url = {https://proceedings.neurips.cc/paper_files/paper/2020/file/98b17f068d5d9b7668e19fb8ae470841-Paper.pdf},
 volume = {33},
 year = {2020}
}"""


def get_model_list():
    return list(IDENTIFIERS)


def get_model(name):
    """The activations model behind the brain model ``name`` (identifier tagged '-untrained' without weights)."""
    return brain_model(name).activations_model


def get_layers(name):
    return list(load_commitment(spec(name).model).candidate_layers)


def get_bibtex(model_identifier):
    spec(model_identifier)  # an unknown identifier raises, naming the known ones
    return BIBTEX


if __name__ == '__main__':
    from brainscore_vision.model_helpers.check_submission import check_models

    check_models.check_base_models(__name__)
