import json

import pytest

from zoo.cli import main
from zoo.registry import REGISTRIES


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_json_is_valid_and_complete(capsys):
    code, out, _ = run(capsys, "list", "--json")
    listing = json.loads(out)
    assert code == 0
    assert set(listing) == set(REGISTRIES)
    assert "lamed" in listing["recipe"] and "test_vit3d" in listing["encoder"]
    assert all(names == sorted(names) for names in listing.values())


def test_list_one_kind_accepts_plural(capsys):
    code, out, _ = run(capsys, "list", "connectors", "--json")
    assert code == 0 and list(json.loads(out)) == ["connector"]


def test_params_json_shape_on_meta(capsys):
    code, out, _ = run(capsys, "params", "--json")
    report = json.loads(out)
    assert code == 0
    assert {"total", "trainable", "components", "stage"} <= set(report)
    assert set(report["components"]) == {"encoder", "connector", "lm"}
    assert report["total"] >= sum(c["total"] for c in report["components"].values()) - 1
    assert report["stage"] == "align"
    assert report["components"]["encoder"]["trainable"] == 0  # align freezes the encoder


def test_params_m3d_connector_counts(capsys):
    for lm, expected in (("llama2_7b", 19_931_136), ("phi3_mini", 11_802_624)):
        code, out, _ = run(capsys, "params", "recipe=lamed", "encoder=vit3d_base_m3d",
                           "connector=spatial_pool", f"lm={lm}", "--json")
        report = json.loads(out)
        assert code == 0 and report["components"]["connector"]["total"] == expected
        assert report["components"]["encoder"]["total"] == 87_389_184


@pytest.mark.parametrize("override,needle", [
    ("recipe=lamd", "Did you mean: lamed"),
    ("encoder=test_vit", "Did you mean: test_vit3d"),
    ("connector=spatial_pol", "Did you mean: spatial_pool"),
])
def test_misspelt_name_exits_2_with_one_line_suggestion(capsys, override, needle):
    code, out, err = run(capsys, "params", override)
    assert code == 2 and out == ""
    assert needle in err and len(err.strip().splitlines()) == 1


def test_unknown_kind_is_named(capsys):
    code, _, err = run(capsys, "list", "encodrs")
    assert code == 2 and "Did you mean: encoder" in err


def test_bad_builder_argument_is_one_line(capsys):
    code, _, err = run(capsys, "params", "encoder.depth=-1")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "depth" in err


def test_pass_through_commands_receive_a_leading_option(capsys):
    from zoo.cli import main

    assert main(["bench", "--strict"]) == 2  # bench's own parser saw --strict
    assert "--strict only applies with --check" in capsys.readouterr().err


def test_commands_print_no_library_warnings(capsys):
    """A plain command shows no warning (peft's FutureWarning is silenced at its one call site)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["params", "--json"]) == 0
    shown = [f"{w.category.__name__}: {w.message}" for w in caught
             if not issubclass(w.category, DeprecationWarning)]
    assert not shown, shown
