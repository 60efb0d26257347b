"""Read and check the commitments kept as data in ``commitments/<model>.json``: the one source of a brain
model's region -> layer map, time bins, visual degrees and preprocessing.

Part of the brain model (brain/): ``brain.model`` builds brain models from these commitments, and the
scoring modules commit other layers to a region through :meth:`Commitment.with_region_layers` and read
recording time bins through :func:`recording_time_bins`, so each rule is written once, here.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from importlib import resources
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import CommitmentError

if TYPE_CHECKING:
    from torch import nn

REGIONS = ('V1', 'V2', 'V4', 'IT')
COMMITMENTS_PACKAGE = f"{__package__.rsplit('.', 1)[0]}.commitments"  # relative: the package also travels inside a Brain-Score plugin
TimeBin = Tuple[int, int]


def parse_time_bins(bins) -> List[TimeBin]:
    """(start, end) ms pairs as tuples of ints, from pairs of any kind (lists, tuples, numpy arrays)."""
    return [tuple(int(t) for t in np.asarray(b).tolist()) for b in bins]


def recording_time_bins(time_bins: Sequence) -> List[TimeBin]:
    """The time bins a brain model's ``start_recording`` was given, parsed; at least one is needed."""
    bins = parse_time_bins(time_bins)
    if not bins:
        raise ValueError("start_recording needs at least one (start, end) time bin")
    return bins


class UnknownLayerError(CommitmentError):
    """A layer asked for by name (an override, a layer to map) that the model does not have.

    ``layers`` are the names asked for that are missing; ``candidates`` the model's candidate layers.
    Callers that took the names from a command-line flag re-raise it naming the flag.
    """

    def __init__(self, message: str, layers: List[str], candidates: List[str]):
        super().__init__(message)
        self.layers, self.candidates = list(layers), list(candidates)


def unknown_layers(model: nn.Module, layers) -> List[str]:
    """The names in ``layers`` that are no module of ``model`` (a ``-tN`` time-step suffix is allowed)."""
    names = {name for name, _ in model.named_modules()}
    return [layer for layer in layers if layer not in names and re.sub(r'-t\d+$', '', layer) not in names]


def layer_hint(model: nn.Module, candidates) -> str:
    """What a valid layer name looks like, for error messages."""
    candidates = list(candidates)
    examples = [name for name, _ in model.named_modules() if name.count('.') >= 2 and name not in candidates][:2]
    return (f"candidate layers: {', '.join(candidates)}; any other module of the network works too"
            + (f" (e.g. {', '.join(examples)})" if examples else ''))


@dataclass(frozen=True)
class Commitment:
    """What a brain model commits to: which layer is which region, when, and how images are shown."""

    model: str
    region_layers: Dict[str, str]
    behavioral_readout_layer: str
    candidate_layers: List[str]
    visual_degrees: float
    image_size: int
    normalize_mean: Tuple[float, float, float]
    normalize_std: Tuple[float, float, float]
    time_bins: Optional[Dict[str, List[TimeBin]]]
    alternative_region_maps: Dict[str, Dict[str, str]]
    source: str

    def layer(self, region: str) -> str:
        if region not in self.region_layers:
            raise CommitmentError(f"{self.model} commits no layer to region {region!r}; committed regions: "
                                  f"{', '.join(self.region_layers)}")
        return self.region_layers[region]

    def region_time_bins(self, region: str) -> Optional[List[TimeBin]]:
        """One (start, end) ms bin per recurrent step of the region's layer; None if feed-forward."""
        if self.time_bins is None:
            return None
        return self.time_bins.get(region)

    def with_region_map(self, name: str) -> 'Commitment':
        """The same commitment with one of the alternative region maps (e.g. Brain-Score's bundled one)."""
        if name not in self.alternative_region_maps:
            raise CommitmentError(f"{self.model} has no alternative region map {name!r}; available: "
                                  f"{sorted(self.alternative_region_maps) or 'none'}")
        # Alternative maps are layer-selected for feed-forward readout: no per-step time bins.
        return replace(self, region_layers=dict(self.alternative_region_maps[name]), time_bins=None)

    def with_region_layers(self, region_layers: Dict[str, str]) -> 'Commitment':
        """The same commitment with some regions moved to other layers (their time bins dropped:
        per-step bins belong to the committed recurrent layer)."""
        time_bins = None if self.time_bins is None else \
            {region: bins for region, bins in self.time_bins.items() if region not in region_layers}
        return replace(self, region_layers={**self.region_layers, **region_layers}, time_bins=time_bins)

    def check_screen(self, network: nn.Module) -> None:
        """The commitment's visual degrees and image size are the brain model's; a VOneBlock's own (from its
        checkpoint or settings, which its Gabor filters were built for) must agree, or the model would see
        its images at another scale than the one it commits to."""
        config = getattr(getattr(network, 'vone_block', None), 'config', None)
        if config is None:
            return
        if (float(config.visual_degrees), int(config.image_size)) != (self.visual_degrees, self.image_size):
            raise CommitmentError(
                f"{self.source} commits {self.model} to {self.visual_degrees:g} deg shown at {self.image_size} px, "
                f"but this network's VOneBlock was built for {config.visual_degrees:g} deg at {config.image_size} "
                f"px (its filters' spatial frequencies depend on both): use a network built for the committed "
                f"screen, or a commitment for this one")

    def check_layers(self, model: nn.Module) -> None:
        """Fail early, naming the layer, if the map points at a module the model does not have."""
        names = {name for name, _ in model.named_modules()}
        used = {**{f'region {r}': layer for r, layer in self.region_layers.items()},
                'behavioural readout': self.behavioral_readout_layer,
                **{f'candidate {layer}': layer for layer in self.candidate_layers}}
        missing = {what: layer for what, layer in used.items() if layer not in names}
        if missing:
            raise CommitmentError(f"{self.source}: {', '.join(f'{w} -> {l!r}' for w, l in missing.items())} "
                                  f"not found in the model; layer names look like "
                                  f"{sorted(n for n in names if n.count('.') <= 1 and n)[:8]}")


def available_commitments() -> List[str]:
    return sorted(p.name[:-len('.json')] for p in resources.files(COMMITMENTS_PACKAGE).iterdir()
                  if p.name.endswith('.json'))


def load_commitment(model: str) -> Commitment:
    """The commitment of a published model (``resnet50``, ``cornets``, ...)."""
    file = resources.files(COMMITMENTS_PACKAGE) / f'{model}.json'
    if not file.is_file():
        raise CommitmentError(f"no commitments file for model {model!r}; available: {available_commitments()}")
    return parse_commitment(json.loads(file.read_text()), source=f'commitments/{model}.json')


def parse_commitment(data: dict, source: str = 'commitment') -> Commitment:
    """Validate a commitments dict (as read from JSON) and turn it into a Commitment."""
    def need(key):
        if key not in data:
            raise CommitmentError(f"{source} lacks the required entry {key!r}")
        return data[key]

    regions = need('regions')
    if not isinstance(regions, dict) or not regions:
        raise CommitmentError(f"{source}: 'regions' must map region names to {{'layer': ...}}")
    unknown = set(regions) - set(REGIONS)
    if unknown:
        raise CommitmentError(f"{source}: unknown region(s) {sorted(unknown)}; regions are {REGIONS}")
    region_layers = {}
    for region, entry in regions.items():
        if not isinstance(entry, dict) or not isinstance(entry.get('layer'), str):
            raise CommitmentError(f"{source}: region {region} needs a 'layer' string")
        region_layers[region] = entry['layer']
    preprocessing = need('preprocessing')
    time_bins = data.get('time_bins')
    if time_bins is not None:
        time_bins = {region: parse_time_bins(bins) for region, bins in time_bins.items()}
        for region, bins in time_bins.items():
            if region not in region_layers or any(len(b) != 2 or b[0] >= b[1] for b in bins):
                raise CommitmentError(f"{source}: time bins of {region} must be (start, end) pairs with start < end "
                                      f"for a committed region")
    return Commitment(
        model=need('model'), region_layers=region_layers,
        behavioral_readout_layer=need('behavioral_readout_layer'),
        candidate_layers=list(need('candidate_layers')), visual_degrees=float(need('visual_degrees')),
        image_size=int(preprocessing['image_size']),
        normalize_mean=tuple(preprocessing['normalize_mean']), normalize_std=tuple(preprocessing['normalize_std']),
        time_bins=time_bins,
        alternative_region_maps={name: dict(m['regions']) for name, m in data.get('alternative_region_maps', {}).items()},
        source=source)
