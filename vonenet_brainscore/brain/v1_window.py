"""Where the Marques2020 V1 property stimuli sit on a VOneNet's input, and the V1 window that covers them.

Part of the brain model (brain/): the brain model decides per call whether a V1 recording may be
windowed (:func:`property_window_for`), and scoring (``scoring.v1_properties``) builds its windowed
runs with the same geometry (:func:`v1_window_for`). Scoring tells this module which stimulus sets are
its generated ones (:func:`recognise_property_stimuli`), so the brain floor never imports scoring.

The geometry: every property benchmark keeps only units whose receptive-field centre lies within
0.15 deg of the stimulus centre (0.5, 0.5) deg. A VOneBlock unit responds only to patches inside its
filter (half-width 12 px = 0.43 deg at 8 deg / 224 px) and the mapping patches have radius 1/6 deg, so
its mapped centre lies within 0.60 deg of the unit per axis; units farther than 0.60 + 0.15 deg (plus
0.1 deg for the 448 -> 224 px resampling) can never be selected. Recording only the window (12 x 12
positions x 512 channels instead of 56 x 56 x 512) leaves the selected units and their responses
unchanged and cuts memory 22-fold.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from ..errors import BrainModelError

Window = Tuple[int, int, int, int]
"""(r0, r1, c0, c1): VOneBlock output rows r0:r1 and columns c0:c1."""

STIMULUS_CENTRE_DEG = (0.5, 0.5)  # (y, x) of every Marques2020 property stimulus
WINDOW_RADIUS_DEG = 0.85          # 0.43 filter + 0.17 patch + 0.15 selection + 0.1 resampling
VOBLOCK_LAYERS = ('vone_block', 'vone_block.output')
"""The layer names of the VOneBlock's output: the only layers a V1 window can crop."""

FREEMAN_ZIEMBA_SET = 'FreemanZiemba2013_properties'
"""The one other stimulus set the Marques2020 property benchmarks record (the FreemanZiemba2013 ones, from S3)."""
_PLACED = re.compile(r'^(?P<name>.+)--target[0-9.]+--source.*$')


@dataclass(frozen=True)
class PropertyStimuli:
    """How to recognise the generated property stimulus sets, as scoring registers them.

    ``serves(name)``: whether Brain-Score now loads stimulus set ``name`` from the generated images, all
    centred at STIMULUS_CENTRE_DEG; ``receptive_field``: the set on whose map the FreemanZiemba2013 units
    are selected; ``opt_out``: how to score with Brain-Score's own stimuli instead (for error messages)."""

    serves: Callable[[str], bool]
    receptive_field: str
    opt_out: str


_property_stimuli: Optional[PropertyStimuli] = None


def recognise_property_stimuli(stimuli: PropertyStimuli) -> None:
    """Called where the generated sets are installed into Brain-Score's registry."""
    global _property_stimuli
    _property_stimuli = stimuli


def around_property_stimuli(block) -> Window:
    """The window of a VOneBlock that holds every unit a property benchmark can select."""
    return block.units_within(STIMULUS_CENTRE_DEG, WINDOW_RADIUS_DEG)


def v1_window_for(model) -> Optional[Window]:
    """The V1 window for a brain model whose V1 is its VOneBlock, else None (any other model: no window)."""
    commitment = getattr(model, 'commitment', None)
    if commitment is None or commitment.layer('V1') not in VOBLOCK_LAYERS:
        return None
    return around_property_stimuli(model.network.vone_block)


def _set_name(stimuli) -> Optional[str]:
    """The stimulus set's registry name, also once placed on a screen (``<name>--target8.00--sourceNone``)."""
    identifier = getattr(stimuli, 'identifier', None)
    if not isinstance(identifier, str):
        return None
    placed = _PLACED.match(identifier)
    return placed.group('name') if placed else identifier


def _records_whole_voneblock(model) -> bool:
    """Whether ``model`` is now recording V1 = its VOneBlock, with no window set for the whole run."""
    commitment = getattr(model, 'commitment', None)
    activations = getattr(model, 'activations_model', None)
    region = getattr(model, 'recording_region', None)
    return commitment is not None and region == 'V1' and not getattr(model, 'do_behavior', False) and \
        getattr(activations, 'v1_window', True) is None and commitment.layer(region) in VOBLOCK_LAYERS


def property_window_for(model, stimuli) -> Optional[Window]:
    """The V1 window for one V1 recording of ``model`` on ``stimuli``, or None: the per-call decision of
    ``VOneNetBrainModel.look_at`` when Brain-Score's property benchmarks call the model directly.

    A window is used only where it is valid: V1 is the VOneBlock, no window is set already (our own runs
    set it for the whole run), and ``stimuli`` is one of the generated Marques2020 sets (placed on the
    screen; Brain-Score's registry serves it from the generated images), all drawn around the stimulus
    centre, where the benchmarks select units within 0.15 deg (module docstring). Brain-Score selects the
    units of a later recording by position (``activations[in_rf]``, with ``in_rf`` from the
    receptive-field map), so every set one benchmark records must have the same units: the
    FreemanZiemba2013 texture set, whose units are selected on our (windowed) receptive-field map, is
    windowed too when it is centred there, and refused otherwise (a full map would select other units).
    Any other stimulus set, region or layer: None (the full map, as always).
    """
    known = _property_stimuli
    if known is None or not _records_whole_voneblock(model):
        return None
    name = _set_name(stimuli)
    if name is not None and known.serves(name):
        return v1_window_for(model)
    if name == FREEMAN_ZIEMBA_SET and known.serves(known.receptive_field):
        positions = {tuple(row) for row in stimuli[['position_y', 'position_x']].to_numpy().tolist()} \
            if {'position_y', 'position_x'} <= set(stimuli.columns) else set()
        if positions == {tuple(STIMULUS_CENTRE_DEG)}:
            return v1_window_for(model)
        raise BrainModelError(
            f"{model.identifier}: {FREEMAN_ZIEMBA_SET} is not centred at {STIMULUS_CENTRE_DEG} deg (positions "
            f"{sorted(positions)[:3]}), so its V1 units cannot be selected on the windowed receptive-field map "
            f"of our generated {known.receptive_field} set; score this benchmark with {known.opt_out} "
            f"(Brain-Score's S3 stimuli, and the full V1 map: about 23 GB for the receptive-field set)")
    return None
