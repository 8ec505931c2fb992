"""``ScopeWidget``'s Python side: the traitlets a notebook sets, and the view modules it imports.

What the front end does with them runs in a real JupyterLab (``test_widget_lab.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import traitlets
from pydantic import Field

from scope.params import StreamParameters

from scope.widgets import ScopeWidget
from scope.widgets import scope_widget
from scope.widgets.scope_widget import DEFAULT_PROMPT


def test_prompts_accept_the_data_channels_forms():
    w = ScopeWidget(prompts="a red fox")
    assert w.prompts == [{"text": "a red fox", "weight": 1.0}]
    w.prompts = ["a", {"text": "b", "weight": 3}]
    assert w.prompts == [{"text": "a", "weight": 1.0}, {"text": "b", "weight": 3.0}]


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("prompts", [{"text": "x", "weight": -1}], "prompts.0.weight"),
        ("noise_scale", 1.5, "noise_scale"),
        ("denoising_step_list", [1000, 1001], "denoising_step_list.1"),
        ("prompt_interpolation_method", "cubic", "prompt_interpolation_method"),
        ("input_source", "camera", "input_source"),
    ],
)
def test_a_bad_value_fails_in_the_cell_naming_the_field(name, value, field):
    w = ScopeWidget()
    before = getattr(w, name)
    with pytest.raises(traitlets.TraitError, match=field.replace(".", r"\.")):
        setattr(w, name, value)
    assert getattr(w, name) == before, "a refused value must not reach the front end"


def test_transition_to_sends_one_request_and_ends_on_the_target():
    w = ScopeWidget(prompts="a harbour")
    w.transition_to("a harbour at night", steps=6, method="slerp")
    first = w._transition
    assert first["target_prompts"] == [{"text": "a harbour at night", "weight": 1.0}]
    assert (first["num_steps"], first["temporal_interpolation_method"]) == (6, "slerp")
    assert w.prompts == first["target_prompts"]
    w.transition_to("a harbour at night", steps=6, method="slerp")
    assert w._transition["id"] != first["id"], "a repeated transition must reach the front end again"
    with pytest.raises(traitlets.TraitError, match="transition.num_steps"):
        w.transition_to("x", steps=-1)


def test_actions_are_one_shot_commands():
    w = ScopeWidget()
    seen = []
    w.observe(lambda change: seen.append(change["new"]["name"]), names=["_command"])
    w.load()
    w.start()
    w.reset_cache()
    w.reset_cache()
    w.stop()
    assert seen == ["load", "start", "reset_cache", "reset_cache", "stop"]


def test_a_runtime_lora_scale_goes_to_the_view_as_lora_scales():
    """``set_lora_scale`` sends one ``lora_scales`` entry, checked in the cell by the data channel's model."""
    w = ScopeWidget()
    seen = []
    w.observe(lambda change: seen.append(change["new"]), names=["_command"])
    w.set_lora_scale(Path("styles/ink.safetensors"), 2)
    w.set_lora_scale("styles/ink.safetensors", -0.5)
    assert [(c["name"], c["lora_scales"]) for c in seen] == [
        ("lora_scales", [{"path": "styles/ink.safetensors", "scale": 2.0}]),
        ("lora_scales", [{"path": "styles/ink.safetensors", "scale": -0.5}]),
    ]
    with pytest.raises(traitlets.TraitError, match=r"lora_scales\.0\.scale: Input should be less than or equal to 10"):
        w.set_lora_scale("styles/ink.safetensors", 10.5)
    assert len(seen) == 2 and w.lora_adapters == []


def test_server_urls_end_with_a_slash_and_the_kernels_own_server_is_same_origin(monkeypatch):
    monkeypatch.setattr("scope.serving.parent_jupyter_server", lambda: {"url": "http://localhost:8888/lab/"})
    assert ScopeWidget(server="http://127.0.0.1:8000").server == "http://127.0.0.1:8000/"
    assert ScopeWidget(server="http://127.0.0.1:8888/lab").server == ""
    assert ScopeWidget().server == ""


def test_a_view_reports_the_page_server_it_uses(monkeypatch):
    """``server=""`` reads back as the URL the view resolved; Python's own settings still collapse."""
    monkeypatch.setattr("scope.serving.parent_jupyter_server", lambda: {"url": "http://localhost:8888/"})
    w = ScopeWidget(server="http://127.0.0.1:8888/")
    assert (w.server, w._page_server) == ("", True)
    w.set_state({"server": "http://localhost:8888/"})  # what the view sends once drawn
    assert (w.server, w._page_server) == ("http://localhost:8888/", True)
    w.server = "http://127.0.0.1:8000"
    assert (w.server, w._page_server) == ("http://127.0.0.1:8000/", False)


def test_the_front_end_is_plain_files_shipped_with_the_package():
    w = ScopeWidget()
    assert str(w._esm).endswith("export default { render };\n")
    assert ".scope-widget" in str(w._css)


#: Data-channel parameters the widget drives through its own API instead of a traitlet.
OWN_API = {
    "input_mode": "input_source",
    "transition": "transition_to()",
    "reset_cache": "reset_cache()",
    "lora_scales": "set_lora_scale()",
    "vace_ref_images": "send_reference_images()",
    "first_frame_image": "send_frame_images()",
    "last_frame_image": "send_frame_images()",
    "recording": "record(), stop_recording()",
}


def test_every_other_stream_parameter_is_a_synced_traitlet_the_front_end_sends():
    expected = [name for name in StreamParameters.model_fields if name not in OWN_API]
    w = ScopeWidget()
    state = w.get_state()
    assert state["_stream_traits"] == expected
    synced = set(ScopeWidget.class_trait_names(sync=True))
    for name in expected:
        assert name in synced and name in state, name
        assert ScopeWidget.class_traits()[name].help == StreamParameters.model_fields[name].description


def test_a_new_parameter_becomes_a_traitlet_without_a_change_to_the_widget():
    class WithStrength(StreamParameters):
        strength: float | None = Field(None, ge=0, le=1)

    names = scope_widget.stream_trait_names(WithStrength)
    assert names[-1] == "strength" and names[:-1] == scope_widget.stream_trait_names()


def test_traitlets_added_from_the_model_are_validated_by_it():
    w = ScopeWidget()
    w.kv_cache_attention_bias = 0.3
    assert w.get_state()["kv_cache_attention_bias"] == 0.3
    with pytest.raises(traitlets.TraitError, match="vace_context_scale"):
        w.vace_context_scale = 2.5
    assert w.vace_context_scale is None
    assert ScopeWidget().prompts == [{"text": DEFAULT_PROMPT, "weight": 1.0}]
    assert ScopeWidget().prompts is not ScopeWidget().prompts


def test_the_default_prompt_is_the_specs_example():
    """One definition, shared by the widget and the server's page (which reads the widget's state)."""
    spec = Path(__file__).resolve().parents[2] / "shared" / "spec" / "server.md"
    assert f'text: "{DEFAULT_PROMPT}"' in spec.read_text()
    assert scope_widget.initial_state()["prompts"] == [{"text": DEFAULT_PROMPT, "weight": 1.0}]


@pytest.mark.parametrize("value", ["", "   ", ["a fox", ""], [{"text": " ", "weight": 1}]])
def test_an_empty_prompt_is_refused_saying_why(value):
    w = ScopeWidget(prompts="a fox")
    with pytest.raises(traitlets.TraitError, match=r"prompts(\.\d\.text)?: the prompt is empty, so there is nothing to generate from"):
        w.prompts = value
    assert w.prompts == [{"text": "a fox", "weight": 1.0}]


def test_no_prompts_means_none_chosen():
    """``[]`` is allowed: nothing is sent, and Start asks for a prompt (checked in Lab)."""
    w = ScopeWidget()
    w.prompts = []
    assert w.prompts == [] and w.get_state()["prompts"] == []


def test_a_transition_before_the_stream_says_where_it_starts():
    """The view that starts the stream later begins on ``from_prompts``, then moves."""
    w = ScopeWidget(prompts="a harbour")
    w.transition_to("a harbour at night")
    assert w._transition["from_prompts"] == [{"text": "a harbour", "weight": 1.0}]
    assert w.prompts == [{"text": "a harbour at night", "weight": 1.0}]


def test_the_page_starts_from_the_widgets_own_state():
    """``/scope/widget-state.json``: ScopeWidget's traitlets only, with the list the view sends."""
    state = scope_widget.initial_state()
    assert state["_stream_traits"] == list(scope_widget.STREAM_TRAITS)
    # "": the view takes the pipeline's default input (none for longlive, the webcam for a V2V one).
    assert state["input_source"] == "" and state["pipeline_id"] == "longlive"
    assert not {"_esm", "_css", "layout", "_model_name"} & set(state)
    w = ScopeWidget()
    assert {name: w.get_state()[name] for name in state} == state


@pytest.mark.usefixtures("jp_serverapp")
async def test_the_view_modules_are_served_to_any_origin(api):
    """The widget imports its view from the server it streams from, possibly another origin."""
    for module in ("widget.js", "api.js", "stream.js", "schema-form.js", "test-pattern.js", "lora-controls.js", "vace-controls.js", "recording-controls.js", "dom.js"):
        reply = await api("GET", f"scope/{module}", headers={"Origin": "http://127.0.0.1:8888"})
        assert reply.status == 200, module
        assert reply.headers["Access-Control-Allow-Origin"] == "*"
        assert "javascript" in reply.headers["Content-Type"]
    view = (await api("GET", "scope/widget.js")).body.decode()
    assert 'model.get("_stream_traits")' in view, "the view sends the traitlets Python names"


@pytest.mark.usefixtures("jp_serverapp")
async def test_the_page_is_served_the_widgets_state_and_stylesheet(api):
    """The page mounts the widget's view: the same starting state and stylesheet, from the package."""
    reply = await api("GET", "scope/widget-state.json")
    assert json.loads(reply.body) == scope_widget.initial_state()
    css = await api("GET", "scope/scope_widget.css")
    assert css.body.decode() == (Path(scope_widget.__file__).parent / "scope_widget.css").read_text()
