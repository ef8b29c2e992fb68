from tests.integration.control.conftest import Api


async def test_the_store_is_migrated_and_tokens_work(api: Api) -> None:
    status, body = await api.call("GET", "/v1/endpoints")
    assert status == 200
    assert body == {"items": [], "total": 0, "limit": 50, "offset": 0, "next_offset": None}
