"""Every way a chain in a registry entry can be wrong fails when it is compiled, naming the
chain, the step's index, the step and the reason; through the registry, the entry fails to load
naming its file while the other entries keep serving.
"""

from __future__ import annotations

import pytest

from capserve.core.chain import ChainError, InputShape
from capserve.plugins.manager import compile_postprocess, compile_preprocess
from capserve.core.steps import Param, ParamError, bind_params

SHAPE = InputShape(64, 32, 1)

PREPROCESS_ERRORS = [
    # (chain, index, step, words in the reason)
    (["grayscale", "sharpen_everything"], 1, "sharpen_everything", "unknown step; known: crop, decolorize"),
    (["grayscale", {"threshold": {"level": 3}}], 1, "threshold", "unknown parameter(s) ['level']; accepted: ['invert', 'method', 'value']"),
    (["normalize", {"invert": {"maximum": 1, "minimum": 0}}], 1, "invert", "unknown parameter(s) ['minimum']"),
    (["keep_colors"], 0, "keep_colors", "missing required parameter 'colors'"),
    ([{"drop_colors": {"tolerance": 10}}], 0, "drop_colors", "missing required parameter 'colors'"),
    ([{"threshold": {"value": "high"}}], 0, "threshold", "parameter 'value' must be an integer, got 'high'"),
    ([{"threshold": {"value": 12.5}}], 0, "threshold", "parameter 'value' must be an integer, got 12.5"),
    ([{"threshold": {"invert": "yes"}}], 0, "threshold", "parameter 'invert' must be true or false, got 'yes'"),
    ([{"crop": {"left": True}}], 0, "crop", "parameter 'left' must be an integer, got True"),
    ([{"normalize": {"scale": "1/255"}}], 0, "normalize", "parameter 'scale' must be a number, got '1/255'"),
    ([{"resize": {"mode": 3}}], 0, "resize", "parameter 'mode' must be a string, got 3"),
    ([{"grayscale": {"weights": 0.5}}], 0, "grayscale", "parameter 'weights' must be a non-empty list, got 0.5"),
    ([{"grayscale": {"weights": []}}], 0, "grayscale", "must be a non-empty list"),
    ([{"grayscale": {"weights": [0.5, "a", 0.2]}}], 0, "grayscale", "parameter 'weights' must be a number, got 'a'"),
    ([{"grayscale": {"weights": [0.5, 0.5]}}], 0, "grayscale", "parameter 'weights' must have 3 items, got 2"),
    (["grayscale", {"crop": {"top": -1}}], 1, "crop", "parameter 'top' must be >= 0, got -1"),
    ([{"threshold": {"value": 300}}], 0, "threshold", "parameter 'value' must be <= 254, got 300"),
    ([{"drop_colors": {"colors": ["#000000"], "tolerance": 500}}], 0, "drop_colors", "parameter 'tolerance' must be <= 442"),
    ([{"remove_specks": {"min_size": 0}}], 0, "remove_specks", "parameter 'min_size' must be >= 1, got 0"),
    ([{"threshold": {"method": "magic"}}], 0, "threshold", "parameter 'method' must be one of ['fixed', 'otsu'], got 'magic'"),
    ([{"median_filter": {"size": 4}}], 0, "median_filter", "parameter 'size' must be one of [3, 5, 7], got 4"),
    ([{"remove_specks": {"connectivity": 6}}], 0, "remove_specks", "must be one of [4, 8]"),
    ([{"frames_concat": {"direction": "diagonal"}}], 0, "frames_concat", "must be one of ['horizontal', 'vertical']"),
    ([{"flatten_alpha": {"background": "#GGGGGG"}}], 0, "flatten_alpha", "parameter 'background' must be a colour as [r, g, b] (0-255) or '#rrggbb', got '#GGGGGG'"),
    ([{"flatten_alpha": {"background": "white"}}], 0, "flatten_alpha", "must be a colour"),
    ([{"flatten_alpha": {"background": [256, 0, 0]}}], 0, "flatten_alpha", "must be a colour"),
    ([{"flatten_alpha": {"background": [255, 0]}}], 0, "flatten_alpha", "must be a colour"),
    ([{"flatten_alpha": {"background": [1.5, 0, 0]}}], 0, "flatten_alpha", "must be a colour"),
    ([{"keep_colors": {"colors": [[255, 0, 0], "#12345"]}}], 0, "keep_colors", "got '#12345'"),
    ([{"keep_colors": {"colors": "#ff0000"}}], 0, "keep_colors", "parameter 'colors' must be a non-empty list"),
    ([{"keep_colors": {"colors": ["#ff0000"], "foreground": "black"}}], 0, "keep_colors", "parameter 'foreground' must be a colour"),
    (["grayscale", "frames_min"], 1, "frames_min", "a frames step must come first in the chain"),
    (["frames_min", "frames_max"], 1, "frames_max", "a frames step must come first in the chain"),
    (["grayscale", {"a": None, "b": None}], 1, "?", "a step is a name or a one-key mapping {name: {parameter: value}}"),
    ([{"threshold": ["otsu"]}], 0, "?", "a step is a name or a one-key mapping"),
    ([42], 0, "?", "a step is a name or a one-key mapping"),
]


@pytest.mark.parametrize("chain, index, step, words", PREPROCESS_ERRORS)
def test_preprocess_chain_errors_name_the_index_the_step_and_the_reason(chain, index, step, words):
    with pytest.raises(ChainError) as info:
        compile_preprocess(chain, SHAPE)
    error = info.value
    assert (error.chain, error.index, error.step) == ("preprocess", index, step)
    assert words in error.reason
    assert str(error).startswith(f"preprocess[{index}] ({step}): ")


POSTPROCESS_ERRORS = [
    (["case", "spellcheck"], 1, "spellcheck", "unknown step; known: arithmetic, case, map_chars"),
    (["map_chars"], 0, "map_chars", "missing required parameter 'mapping'"),
    ([{"map_chars": {"mapping": "O0l1"}}], 0, "map_chars", "parameter 'mapping' must be a non-empty mapping of strings"),
    ([{"map_chars": {"mapping": {}}}], 0, "map_chars", "must be a non-empty mapping"),
    ([{"map_chars": {"mapping": {"O": True}}}], 0, "map_chars", "must map strings to strings (quote true/false/null), got True"),
    ([{"map_chars": {"mapping": {"O": None}}}], 0, "map_chars", "got None"),
    ([{"map_chars": {"mapping": {"": "x"}}}], 0, "map_chars", "has an empty key"),
    (["case", {"case": {"mode": "title"}}], 1, "case", "parameter 'mode' must be one of ['lower', 'upper', 'casefold'], got 'title'"),
    ([{"arithmetic": {"decimals": -1}}], 0, "arithmetic", "parameter 'decimals' must be >= 0, got -1"),
    ([{"arithmetic": {"on_error": "raise"}}], 0, "arithmetic", "must be one of ['keep', 'empty']"),
    (["frames_min"], 0, "frames_min", "unknown step"),  # a preprocess step is not a postprocess step
]


@pytest.mark.parametrize("chain, index, step, words", POSTPROCESS_ERRORS)
def test_postprocess_chain_errors_name_the_index_the_step_and_the_reason(chain, index, step, words):
    with pytest.raises(ChainError) as info:
        compile_postprocess(chain)
    error = info.value
    assert (error.chain, error.index, error.step) == ("postprocess", index, step)
    assert words in error.reason
    assert str(error) == f"postprocess[{index}] ({step}): {error.reason}"


def test_a_chain_that_is_not_a_list():
    with pytest.raises(ChainError, match=r"preprocess\[0\] \(\?\): must be a list of steps"):
        compile_preprocess("grayscale", SHAPE)


def test_valid_chains_compile_with_defaults_filled_in():
    pre = compile_preprocess(
        [
            {"frames_pick": {"index": -1}},
            {"keep_colors": {"colors": ["#C81E1E", [0, 0, 0]], "tolerance": 30, "foreground": [0, 0, 0]}},
            {"crop": None},
            "grayscale",
            {"threshold": {"method": "otsu"}},
            "resize",
            "normalize",
        ],
        SHAPE,
    )
    assert pre.wants_frames and pre.names[0] == "frames_pick" and len(pre.calls) == 7
    assert pre.calls[1].keywords == {
        "colors": ((200, 30, 30), (0, 0, 0)), "tolerance": 30.0, "background": (255, 255, 255), "foreground": (0, 0, 0),
    }
    post = compile_postprocess([{"map_chars": {"mapping": {"O": 0, "l": "1", 5: "S"}}}, "arithmetic"])
    assert post.calls[0].keywords == {"mapping": (("O", "0"), ("l", "1"), ("5", "S"))}
    assert post("lO+5=?", ()) == "10+S=?"  # one pass of the mapping, then not arithmetic: kept
    assert compile_postprocess([{"map_chars": {"mapping": {"O": 0, "l": 1}}}, "arithmetic"])("lO+5=?", ()) == "15"


def test_param_declarations_are_checked():
    with pytest.raises(ValueError, match="type must be one of"):
        Param("x", "complex")
    with pytest.raises(ParamError, match="missing required parameter 'a'"):
        bind_params((Param("a", "int"),), {})
    assert bind_params((Param("a", "rgb", default=None),), None) == {"a": None}
    assert Param("m", "dict[str]", default=(("O", "0"),)).describe()["default"] == {"O": "0"}
    assert Param("c", "list[rgb]", default=((1, 2, 3),)).describe()["default"] == [[1, 2, 3]]


@pytest.fixture()
def two_entries(tmp_path, tiny_model_bytes):
    from tests import model_factory

    root = tmp_path / "registry"
    good = model_factory.write_entry(root / "good" / "1", tiny_model_bytes, site="good")
    bad = model_factory.write_entry(
        root / "bad" / "1",
        tiny_model_bytes,
        site="bad",
        preprocess=["grayscale", {"threshold": {"method": "otsu"}}, {"crop": {"left": -2}}, "resize", "normalize"],
    )
    return root, good, bad


def test_registry_reports_file_index_and_reason_and_keeps_serving_the_rest(two_entries):
    from capserve.model_registry.registry import Registry

    root, good, bad = two_entries
    registry = Registry([root])
    registry.refresh()
    assert registry.sites() == ["good"]
    (failed,) = [entry for entry in registry.entries() if entry.site == "bad"]
    assert failed.state == "FAILED"
    assert str(bad) in failed.error and "preprocess[2]" in failed.error
    assert "'crop'" in failed.error and "parameter 'left' must be >= 0, got -2" in failed.error
    registry.get("good")  # still serving
    registry.close()


def test_registry_reports_postprocess_errors_too(tmp_path, tiny_model_bytes):
    from capserve.model_registry.registry import Registry
    from tests import model_factory

    path = model_factory.write_entry(
        tmp_path / "r" / "calc" / "1", tiny_model_bytes, site="calc", postprocess=["arithmetic", {"case": {"mode": 1}}]
    )
    registry = Registry([tmp_path / "r"])
    registry.refresh()
    (entry,) = registry.entries()
    assert entry.state == "FAILED" and str(path) in entry.error
    assert "postprocess[1]" in entry.error and "parameter 'mode' must be a string, got 1" in entry.error
    registry.close()
