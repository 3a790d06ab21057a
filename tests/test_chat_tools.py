"""Tool calls end to end: fake model → Kind Robots → a fake API described by a committed OpenAPI
document (tests/data/orders-api.yaml) → the result back to the model and to the widget.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from tests.chat_helpers import widget_chat
from tests.conftest import Account, Client, RunningServer
from tests.fake_llm import (
    FakeLLM,
    FakeToolCall,
    Setup,
    anthropic_text,
    anthropic_tool_use,
    deploy_on_fake,
    openai_text,
    openai_tool_calls,
    stored_messages,
    stream,
    streamed_text,
)
from tests.servers import serving

API_KEY = "fakekey-tools-5hR8kP2w"
DOCUMENT = Path(__file__).parent / "data" / "orders-api.yaml"
DOCUMENT_SERVER = "http://127.0.0.1:8080/api"
ORDERS: dict[str, dict[str, Any]] = {
    "A-1001": {
        "orderId": "A-1001",
        "status": "shipped",
        "eta": "2024-06-03",
        "shipping": {"carrier": "DHL", "tracking": "JD0146000034"},
    },
}
CREATE_MANIFEST = """
mutation($input: CreateManifestInput!) { createManifest(input: $input) { id } }
"""


@dataclass
class OrdersApi:
    """The fake of the API the document describes; records every request it serves."""

    port: int = 0
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, query

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    async def order(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path, request.query_string))
        order = ORDERS.get(request.match_info["order_id"])
        if order is None:
            return web.json_response({"error": "no such order"}, status=404)
        if request.query.get("include") != "shipping":
            order = {k: v for k, v in order.items() if k != "shipping"}
        return web.json_response(order)


@pytest_asyncio.fixture(scope="module")
async def orders_api() -> AsyncIterator[OrdersApi]:
    api = OrdersApi()
    app = web.Application()
    app.router.add_get("/api/orders/{order_id}", api.order)
    async with serving(app, access_log=None) as api.port:
        yield api


@pytest.fixture(scope="module")
def llm_allow(orders_api: OrdersApi) -> list[str]:
    return [f"127.0.0.1:{orders_api.port}"]


async def set_up(
    server: RunningServer,
    http: aiohttp.ClientSession,
    fake: FakeLLM,
    account: Account,
    orders_api: OrdersApi,
    provider: str,
) -> Setup:
    client = Client(http, server.base_url)
    document = DOCUMENT.read_text()
    assert DOCUMENT_SERVER in document
    manifest = await client.execute(
        CREATE_MANIFEST,
        {
            "input": {
                "organizationId": account.organization_id,
                "name": "Orders",
                "openapi": document.replace(DOCUMENT_SERVER, orders_api.url),
            }
        },
        token=account.access_token,
    )
    assert manifest.errors == [], manifest.errors
    setup = await deploy_on_fake(
        server,
        http,
        fake,
        account,
        provider=provider,
        model="gpt-4o-mini" if provider != "ANTHROPIC" else "claude-3-5-haiku-latest",
        api_key=API_KEY,
        manifest_ids=[manifest.data["createManifest"]["id"]],
    )
    orders_api.requests.clear()
    return setup


# The arguments as the model streams them: split mid-key and mid-value.
GET_ORDER = FakeToolCall(
    "call_Xq81", "getOrder", ['{"orderId":', ' "A-10', '01", "incl', 'ude": "shipping"}']
)
ORDER_RESULT = {"status": 200, "body": ORDERS["A-1001"]}
FINAL = ["Your order A-1001 ", "shipped with DHL ", "and arrives June 3."]


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [event["__typename"] for event in events]


async def test_openai_tool_call_reaches_the_api_and_its_result_the_model_and_the_widget(
    llm_server: RunningServer,
    account: Account,
    http: aiohttp.ClientSession,
    fake: FakeLLM,
    orders_api: OrdersApi,
) -> None:
    setup = await set_up(llm_server, http, fake, account, orders_api, "OPENAI")
    setup.scenario.queue(
        stream(openai_tool_calls([GET_ORDER], usage=(80, 22))),
        stream(openai_text(FINAL, usage=(140, 12))),
    )

    events = await widget_chat(http, llm_server, setup.deployed.project_key, "Where is A-1001?")

    assert kinds(events)[:2] == ["ChatStarted", "ChatToolCall"], kinds(events)
    assert kinds(events)[-1] == "ChatCompleted"
    assert set(kinds(events)[2:-1]) == {"ChatDelta"}, kinds(events)
    assert events[1] == {
        "__typename": "ChatToolCall",
        "name": "getOrder",
        "arguments": {"orderId": "A-1001", "include": "shipping"},
        "result": ORDER_RESULT,
    }
    assert streamed_text(events) == "".join(FINAL)
    assert events[-1]["usage"] == {"inputTokens": 220, "outputTokens": 34}

    # The API was called as the document describes: path parameter and query parameter.
    assert orders_api.requests == [("GET", "/api/orders/A-1001", "include=shipping")]

    first, second = setup.scenario.requests
    (tool,) = first.body["tools"]
    assert tool["type"] == "function"
    assert tool["function"]["name"] == "getOrder"
    assert tool["function"]["parameters"]["required"] == ["orderId"]
    assert set(tool["function"]["parameters"]["properties"]) == {"orderId", "include"}
    # The second request carries the call and its result, answering the call by id.
    *earlier, call_message, result_message = second.body["messages"]
    assert earlier == first.body["messages"]
    assert call_message["role"] == "assistant"
    assert call_message["tool_calls"] == [
        {
            "id": "call_Xq81",
            "type": "function",
            "function": {"name": "getOrder", "arguments": GET_ORDER.arguments},
        }
    ]
    assert result_message["role"] == "tool"
    assert result_message["tool_call_id"] == "call_Xq81"
    assert json.loads(result_message["content"]) == ORDER_RESULT

    user, assistant = await stored_messages(llm_server, events[0]["conversationId"])
    assert (user.role, user.content) == ("user", "Where is A-1001?")
    assert (assistant.role, assistant.content, assistant.partial) == (
        "assistant",
        "".join(FINAL),
        False,
    )
    assert [(c["id"], c["name"], c["result"]) for c in assistant.tool_calls] == [
        ("call_Xq81", "getOrder", ORDER_RESULT)
    ]
    assert (assistant.input_tokens, assistant.output_tokens) == (220, 34)


async def test_anthropic_tool_use_reaches_the_api_and_its_result_the_model_and_the_widget(
    llm_server: RunningServer,
    account: Account,
    http: aiohttp.ClientSession,
    fake: FakeLLM,
    orders_api: OrdersApi,
) -> None:
    setup = await set_up(llm_server, http, fake, account, orders_api, "ANTHROPIC")
    call = FakeToolCall("toolu_01A", "getOrder", ['{"order', 'Id": "A-1001"', "}"])
    setup.scenario.queue(
        stream(anthropic_tool_use([call], usage=(300, 40), preamble=["Let me ", "check. "])),
        stream(anthropic_text(["It has ", "shipped."], usage=(420, 9))),
    )

    events = await widget_chat(http, llm_server, setup.deployed.project_key, "Where is A-1001?")

    tool_events = [event for event in events if event["__typename"] == "ChatToolCall"]
    unshipped = {k: v for k, v in ORDERS["A-1001"].items() if k != "shipping"}
    assert tool_events == [
        {
            "__typename": "ChatToolCall",
            "name": "getOrder",
            "arguments": {"orderId": "A-1001"},
            "result": {"status": 200, "body": unshipped},
        }
    ]
    position = events.index(tool_events[0])
    assert streamed_text(events[:position]) == "Let me check. "
    assert streamed_text(events[position:]) == "It has shipped."
    assert events[-1]["__typename"] == "ChatCompleted"
    assert events[-1]["usage"] == {"inputTokens": 720, "outputTokens": 49}
    assert orders_api.requests == [("GET", "/api/orders/A-1001", "")]

    first, second = setup.scenario.requests
    assert [tool["name"] for tool in first.body["tools"]] == ["getOrder"]
    assert first.body["tools"][0]["input_schema"]["required"] == ["orderId"]
    assert second.body["messages"][:1] == first.body["messages"]
    assert second.body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check. "},
                {
                    "type": "tool_use",
                    "id": "toolu_01A",
                    "name": "getOrder",
                    "input": {"orderId": "A-1001"},
                },
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_01A", "content": ANY_JSON}],
        },
    ]
    result_block = second.body["messages"][2]["content"][0]
    assert json.loads(result_block["content"]) == {"status": 200, "body": unshipped}

    _user, assistant = await stored_messages(llm_server, events[0]["conversationId"])
    assert assistant.content == "Let me check. It has shipped."
    assert not assistant.partial


class _AnyJson:
    """Equal to any string holding JSON (checked in detail separately)."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, str):
            return False
        try:
            json.loads(other)
        except ValueError:
            return False
        return True

    def __hash__(self) -> int:
        return 0


ANY_JSON = _AnyJson()


async def test_parallel_tool_calls_interleaved_in_the_stream_each_get_their_result(
    llm_server: RunningServer,
    account: Account,
    http: aiohttp.ClientSession,
    fake: FakeLLM,
    orders_api: OrdersApi,
) -> None:
    setup = await set_up(llm_server, http, fake, account, orders_api, "OPENAI")
    calls = [
        FakeToolCall("call_a", "getOrder", ['{"orderId"', ': "A-1001"}']),
        FakeToolCall("call_b", "getOrder", ['{"order', 'Id": "B-', '9999"}']),
    ]
    setup.scenario.queue(
        stream(openai_tool_calls(calls, usage=(90, 30))),
        stream(openai_text(["One has shipped; ", "B-9999 does not exist."], usage=(150, 10))),
    )

    events = await widget_chat(http, llm_server, setup.deployed.project_key, "A-1001 and B-9999?")

    tool_events = [event for event in events if event["__typename"] == "ChatToolCall"]
    assert [(e["arguments"], e["result"]["status"]) for e in tool_events] == [
        ({"orderId": "A-1001"}, 200),
        ({"orderId": "B-9999"}, 404),
    ]
    assert tool_events[1]["result"]["body"] == {"error": "no such order"}
    assert sorted(orders_api.requests) == [
        ("GET", "/api/orders/A-1001", ""),
        ("GET", "/api/orders/B-9999", ""),
    ]
    _first, second = setup.scenario.requests
    results = [m for m in second.body["messages"] if m["role"] == "tool"]
    assert [(m["tool_call_id"], json.loads(m["content"])["status"]) for m in results] == [
        ("call_a", 200),
        ("call_b", 404),
    ]
    assert streamed_text(events) == "One has shipped; B-9999 does not exist."


@pytest.mark.parametrize("provider", ["OPENAI", "ANTHROPIC"])
async def test_a_follow_up_message_sends_the_earlier_tool_call_and_its_result(
    provider: str,
    llm_server: RunningServer,
    account: Account,
    http: aiohttp.ClientSession,
    fake: FakeLLM,
    orders_api: OrdersApi,
) -> None:
    setup = await set_up(llm_server, http, fake, account, orders_api, provider)
    if provider == "OPENAI":
        setup.scenario.queue(
            stream(openai_tool_calls([GET_ORDER], usage=(80, 22))),
            stream(openai_text(FINAL, usage=(140, 12))),
            stream(openai_text(["With DHL."], usage=(200, 4))),
        )
    else:
        call = FakeToolCall(
            "call_Xq81", "getOrder", ['{"orderId": "A-1001", ', '"include": "shipping"}']
        )
        setup.scenario.queue(
            stream(anthropic_tool_use([call])),
            stream(anthropic_text(FINAL)),
            stream(anthropic_text(["With DHL."])),
        )
    first = await widget_chat(http, llm_server, setup.deployed.project_key, "Where is A-1001?")
    conversation_id = first[0]["conversationId"]
    second = await widget_chat(
        http,
        llm_server,
        setup.deployed.project_key,
        "Which carrier?",
        conversation_id=conversation_id,
        conversation_token=first[0]["conversationToken"],
    )
    assert second[0]["conversationId"] == conversation_id
    assert streamed_text(second) == "With DHL."
    assert len(orders_api.requests) == 1  # the follow-up did not call the API again

    follow_up = setup.scenario.requests[2].body["messages"]
    if provider == "OPENAI":
        results = [m["content"] for m in follow_up if m["role"] == "tool"]
        calls = [m["tool_calls"] for m in follow_up if m.get("tool_calls")]
        said = [m["content"] for m in follow_up if m["role"] == "assistant" and m["content"]]
        asked = [m["content"] for m in follow_up if m["role"] == "user"]
    else:
        blocks = [
            block for m in follow_up if isinstance(m["content"], list) for block in m["content"]
        ]
        results = [b["content"] for b in blocks if b["type"] == "tool_result"]
        calls = [[b] for b in blocks if b["type"] == "tool_use"]
        said = [
            m["content"]
            for m in follow_up
            if m["role"] == "assistant" and isinstance(m["content"], str)
        ]
        asked = [
            m["content"] for m in follow_up if m["role"] == "user" and isinstance(m["content"], str)
        ]
    assert len(calls) == 1
    # The model reads the earlier result again: without it, it could not say the carrier.
    assert [json.loads(result) for result in results] == [ORDER_RESULT]
    assert said == ["".join(FINAL)]
    assert asked == ["Where is A-1001?", "Which carrier?"]
