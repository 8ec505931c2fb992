"""``longlive`` still produces the recorded output (tests/data/longlive_regression.npz).

The scenarios, the tolerances and the measurements behind them live in
``tests/longlive_regression.py``; docs/pipelines.md says how and when to record again.
"""

from __future__ import annotations

import pytest

from scope.pipelines.longlive import SETTINGS
from tests import longlive_regression as regression


@pytest.fixture(scope="module")
def recorded(synthetic_models):
    return regression.record(regression.load(synthetic_models))


@pytest.fixture(scope="module")
def expected():
    return regression.stored()


def test_the_data_holds_exactly_the_scenarios(expected, recorded):
    assert sorted(expected) == sorted(recorded), "record the data again after changing the scenarios"


@pytest.mark.parametrize("scenario", list(regression.SCENARIOS))
def test_output_matches_the_recording(expected, recorded, scenario):
    problems = regression.compare(expected, recorded, scenario)
    assert not problems, f"{scenario} differs from the recording:\n" + "\n".join(problems)


def test_the_scenarios_reach_what_they_pin(recorded):
    """Eviction, re-cache before and after it, a transition and video mode all happen."""
    text = {field: recorded[f"text_eviction/{field}"] for field in regression.INFO_FIELDS}
    end = text["current_start_frame"][5] + SETTINGS.frames_per_block
    assert end > SETTINGS.local_attn_size, "the text scenario must outgrow the window"
    assert text["recached"].tolist() == [False] * 6 + [True, False]
    assert recorded["prompt_switch/recached"].tolist() == [False, False, True, False]
    assert recorded["transition/transition_active"].tolist() == [False, True, True, False, False]
    assert recorded["transition/recached"].tolist() == [False, True, True, True, False]
    video = {field: recorded[f"video/{field}"] for field in regression.INFO_FIELDS}
    assert video["frame_count"].tolist() == [13, 12, 12] and video["init_cache"].tolist() == [True, False, False]
    assert 0.54 + 0.07 < video["noise_scale"][0] < 0.72 + 0.07, "the motion controller should be inside its range"
