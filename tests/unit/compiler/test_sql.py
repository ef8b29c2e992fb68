from compiler.definition import parse_definition
from compiler.sandbox import engine_keywords
from compiler.sql import QUOTED_KEYWORDS, display_sql, quote_ident, quote_literal

REFERENCE_SQL = (
    "SELECT json_extract_string(raw, '$.userId') AS user_id, "
    "json_extract_string(raw, '$.event') AS event_type, "
    "CAST(json_extract_string(raw, '$.ts') AS TIMESTAMP) AS timestamp "
    "FROM source WHERE event_type != 'heartbeat'"
)


def test_the_reference_preview_compiles_to_the_reference_sql() -> None:
    definition = parse_definition(
        {
            "columns": [
                {"name": "user_id", "type": "VARCHAR", "path": "$.userId"},
                {"name": "event_type", "type": "VARCHAR", "path": "$.event"},
                {"name": "timestamp", "type": "TIMESTAMP", "path": "$.ts"},
            ],
            "filters": [{"condition": "event_type != 'heartbeat'"}],
        }
    )
    assert display_sql(definition) == REFERENCE_SQL


def test_the_quoted_keyword_list_matches_the_duckdb_in_use() -> None:
    assert engine_keywords(("reserved", "type_function")) == QUOTED_KEYWORDS


def test_identifiers_are_quoted_when_they_are_keywords() -> None:
    assert quote_ident("order") == '"order"'
    assert quote_ident("left") == '"left"'
    assert quote_ident("user_id") == "user_id"
    assert quote_ident("timestamp") == "timestamp"
    assert quote_ident('we"ird') == '"we""ird"'


def test_literals_are_escaped() -> None:
    assert quote_literal("it's") == "'it''s'"
    assert quote_literal(None) == "NULL"
    assert quote_literal(True) == "TRUE"
    assert quote_literal(-3) == "-3"


def test_several_filters_are_anded_and_virtual_sources_are_plain_columns() -> None:
    definition = parse_definition(
        {
            "columns": [
                {"name": "t", "type": "VARCHAR", "source": "topic"},
                {"name": "order", "type": "INTEGER", "path": "$['order']", "default": 0},
            ],
            "filters": [
                {"condition": "t LIKE 'a/%'"},
                {"condition": '"order" > 1' if False else "order > 1"},
            ],
        }
    )
    assert display_sql(definition) == (
        "SELECT topic AS t, COALESCE(CAST(json_extract_string(raw, '$.order') AS INTEGER), "
        'CAST(0 AS INTEGER)) AS "order" FROM source WHERE (t LIKE \'a/%\') AND ("order" > 1)'
    )
