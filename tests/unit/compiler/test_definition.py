import pytest
import yaml

from compiler.definition import load_definition_text, parse_definition
from compiler.errors import DefinitionInvalid
from compiler.jsonpath import parse_jsonpath
from compiler.types import parse_type

REFERENCE = {
    "columns": [
        {"name": "user_id", "type": "VARCHAR", "path": "$.userId", "required": True},
        {"name": "event_type", "type": "VARCHAR", "path": "$.event"},
        {"name": "timestamp", "type": "TIMESTAMP", "path": "$.ts"},
        {"name": "amount", "type": "DOUBLE", "path": "$.payload.amount", "cast_failures": "dlq"},
    ],
    "filters": [
        {"condition": "event_type != 'heartbeat'", "description": "Exclude keepalive events"}
    ],
}


def _problems(raw: object) -> dict[str, str]:
    with pytest.raises(DefinitionInvalid) as info:
        parse_definition(raw)
    return {p.path: p.message for p in info.value.problems}


def test_the_reference_definition_parses() -> None:
    definition = parse_definition(REFERENCE)
    assert [c.name for c in definition.columns] == ["user_id", "event_type", "timestamp", "amount"]
    assert definition.columns[0].required
    assert definition.columns[3].cast_failures == "dlq"
    assert definition.columns[2].cast_failures == "null"
    assert definition.filters[0].description == "Exclude keepalive events"


def test_the_same_definition_reads_from_yaml() -> None:
    text = yaml.safe_dump(REFERENCE)
    assert parse_definition(load_definition_text(text, "yaml")) == parse_definition(REFERENCE)


def test_every_problem_is_reported_with_its_path() -> None:
    problems = _problems(
        {
            "columns": [
                {"name": "Bad Name", "type": "VARCHAR", "path": "$.a"},
                {"name": "ok", "type": "VARCHARX", "path": "$.a"},
                {"name": "p", "type": "INTEGER", "path": "a.b"},
                {"name": "q", "type": "INTEGER", "source": "nope"},
                {"name": "r", "type": "INTEGER", "path": "$.r", "cast_failures": "explode"},
                {"name": "s", "type": "INTEGER", "path": "$.s", "required": "yes"},
                {"name": "t", "type": "INTEGER"},
                {"name": "ts", "type": "VARCHAR", "path": "$.ts"},
                {"name": "u", "type": "INTEGER", "path": "$.u", "colour": "red"},
            ],
            "filters": [{"condition": "missing_column = 1"}],
            "partitions": [{"column": "u", "transform": "day"}],
            "extra": 1,
        }
    )
    assert set(problems) == {
        "definition.columns[0].name",
        "definition.columns[1].type",
        "definition.columns[2].path",
        "definition.columns[3].source",
        "definition.columns[4].cast_failures",
        "definition.columns[5].required",
        "definition.columns[6]",
        "definition.columns[7].name",
        "definition.columns[8].colour",
        "definition.filters[0].condition",
        "definition.partitions[0].transform",
        "definition.extra",
    }
    assert "unknown name 'missing_column'" in problems["definition.filters[0].condition"]


def test_column_count_is_bounded() -> None:
    assert "definition.columns" in _problems({"columns": []})
    many = [{"name": f"c{i}", "type": "VARCHAR", "path": f"$.c{i}"} for i in range(101)]
    assert "definition.columns" in _problems({"columns": many})


def test_duplicate_column_names_are_refused() -> None:
    cols = [{"name": "a", "type": "VARCHAR", "path": "$.a"}] * 2
    assert _problems({"columns": cols}) == {
        "definition.columns[1].name": "duplicate column name 'a'"
    }


def test_time_transforms_need_a_temporal_column() -> None:
    problems = _problems(
        {
            "columns": [{"name": "d", "type": "DATE", "path": "$.d"}],
            "partitions": [{"column": "d", "transform": "hour"}],
        }
    )
    assert "definition.partitions[0].transform" in problems


def test_defaults_must_fit_their_type() -> None:
    problems = _problems(
        {"columns": [{"name": "n", "type": "INTEGER", "path": "$.n", "default": "x"}]}
    )
    assert "definition.columns[0].default" in problems


@pytest.mark.parametrize(
    ("text", "sql"),
    [
        ("varchar", "VARCHAR"),
        ("DECIMAL(10, 2)", "DECIMAL(10,2)"),
        ("timestamptz", "TIMESTAMPTZ"),
        ("UUID", "UUID"),
        ("json", "JSON"),
    ],
)
def test_allowed_types_normalise(text: str, sql: str) -> None:
    assert parse_type(text).sql == sql


@pytest.mark.parametrize(
    "text",
    [
        "DECIMAL(40,2)",
        "DECIMAL(5,6)",
        "DECIMAL(x)",
        "INTEGER[]",
        "STRUCT(a INT)",
        "MAP",
        "VARCHAR; DROP",
    ],
)
def test_other_types_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"DECIMAL|not allowed"):
        parse_type(text)


@pytest.mark.parametrize(
    ("path", "rendered"),
    [
        ("$", "$"),
        ("$.userId", "$.userId"),
        ("$.payload.amount", "$.payload.amount"),
        ("$['a b'][2]", '$."a b"[2]'),
        ('$["it\'s"].x', '$."it\'s".x'),
        ("$.user-id", '$."user-id"'),
        ("$[0][1]", "$[0][1]"),
    ],
)
def test_jsonpath_subset_renders_for_duckdb(path: str, rendered: str) -> None:
    assert parse_jsonpath(path).render() == rendered


@pytest.mark.parametrize(
    "path", ["a.b", "$..a", "$.a[*]", "$[?(@.a)]", "$.a[-1]", "$['a\"b']", "$['a", "$.", "$.a[1:2]"]
)
def test_jsonpath_outside_the_subset_is_refused(path: str) -> None:
    with pytest.raises(ValueError, match=r"position|key|path"):
        parse_jsonpath(path)
