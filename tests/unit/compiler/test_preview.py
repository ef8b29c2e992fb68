import json
from pathlib import Path

import pytest

from compiler.errors import DefinitionInvalid
from compiler.preview import run_preview

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "reference"
REQUEST = json.loads((FIXTURES / "preview_request.json").read_text())
RESPONSE = json.loads((FIXTURES / "preview_response.json").read_text())


def test_the_reference_preview_returns_the_reference_response() -> None:
    got = run_preview(REQUEST["definition"], REQUEST["samples"])
    assert isinstance(got.pop("executionTimeMs"), float)
    expected = dict(RESPONSE)
    expected.pop("executionTimeMs")
    assert got == expected
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)


def test_preview_warns_about_null_columns_dropped_rows_and_dlq_samples() -> None:
    definition = {
        "columns": [
            {"name": "a", "type": "VARCHAR", "path": "$.a"},
            {"name": "b", "type": "VARCHAR", "path": "$.nothing"},
        ],
        "filters": [{"condition": "a = 'never'"}],
    }
    got = run_preview(definition, ['{"a": "x"}', "oops"])
    assert got["success"] is True
    assert got["rowCount"] == 0
    assert any("DLQ: invalid_json" in w for w in got["warnings"])
    got = run_preview(definition, ['{"a": "x"}'])
    assert "the filters drop every sample" in got["warnings"]
    got = run_preview({"columns": definition["columns"]}, ['{"a": "x"}'])
    assert "column 'b' is null in every accepted row" in got["warnings"]


def test_preview_limits_are_a_validation_error() -> None:
    definition = REQUEST["definition"]
    with pytest.raises(DefinitionInvalid) as info:
        run_preview(definition, ["{}"] * 101)
    assert info.value.problems[0].path == "samples"
    with pytest.raises(DefinitionInvalid) as info:
        run_preview(definition, ["{}", "x" * (64 * 1024 + 1)])
    assert info.value.problems[0].path == "samples[1]"
