"""``/explorer/config.json`` publishes a chain's ``public_rpc_url`` only, never its private
``rpc_url`` (a BSN gateway URL embeds a project key; issue 14 item 17): the setting comes from
the TOML ``[[chains]]`` table or ``CITYANCHOR_CHAIN_PUBLIC_RPC_URL``, is checked to be an http(s)
URL without user info, and only it reaches the page's Content-Security-Policy."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from anchor.api.app import ApiContext, create_app
from anchor.errors import UsageError
from anchor.host.config import ChainSettings, Settings, load_settings, settings_to_toml

SECRET = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
PRIVATE = f"https://hk.bsngate.example/api/{SECRET}/evm/rpc"


def _get(settings: Settings, path: str) -> tuple[dict[str, str], str]:
    async def body() -> tuple[dict[str, str], str]:
        app = create_app(ApiContext(store=None, settings=settings))  # type: ignore[arg-type]
        async with TestClient(TestServer(app)) as client:
            resp = await client.get(path)
            assert resp.status == 200
            return dict(resp.headers), await resp.text()

    return asyncio.run(body())


def _chains(public: str) -> Settings:
    return Settings(
        chains=(
            ChainSettings(
                name="bsn",
                rpc_url=PRIVATE,
                chain_id=5,
                contract="0x" + "ab" * 20,
                public_rpc_url=public,
            ),
        )
    )


def test_config_json_publishes_the_public_endpoint_only() -> None:
    _, text = _get(_chains("https://rpc.city.example/evm"), "/explorer/config.json")
    assert SECRET not in text and "bsngate" not in text

    config: dict[str, Any] = json.loads(text)
    assert config["chains"] == [
        {
            "name": "bsn",
            "chain_id": 5,
            "rpc_url": "https://rpc.city.example/evm",
            "contract": "0x" + "ab" * 20,
        }
    ]
    headers, _ = _get(_chains("https://rpc.city.example/evm"), "/explorer")
    csp = headers["Content-Security-Policy"]
    assert SECRET not in csp and "bsngate" not in csp
    assert "connect-src 'self' https://rpc.city.example https:" in csp


def test_without_a_public_endpoint_none_is_published() -> None:
    _, text = _get(_chains(""), "/explorer/config.json")
    assert SECRET not in text and "bsngate" not in text

    assert json.loads(text)["chains"][0]["rpc_url"] is None
    headers, _ = _get(_chains(""), "/explorer")
    assert SECRET not in headers["Content-Security-Policy"]


def test_public_rpc_url_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        f'[[chains]]\nname = "bsn"\nrpc_url = "{PRIVATE}"\n'
        'public_rpc_url = "https://rpc.city.example/evm"\n'
    )
    s = load_settings(toml_path=path, env={})
    assert s.chains[0].public_rpc_url == "https://rpc.city.example/evm"
    assert load_settings(toml_path=path, env={}) == s
    s = load_settings(
        toml_path=path, env={"CITYANCHOR_CHAIN_PUBLIC_RPC_URL": "https://other.example"}
    )
    assert (s.chains[0].rpc_url, s.chains[0].public_rpc_url) == (PRIVATE, "https://other.example")
    # config show / up's config.toml round trip keeps it.
    again = tmp_path / "again.toml"
    again.write_text(settings_to_toml(s))
    assert load_settings(toml_path=again, env={}) == s


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://rpc.example", "must be an http"),
        ("rpc.example:8545", "must be an http"),
        ("https://user:key@rpc.example", "must not carry user info"),
        ("https://rpc.example/a;b", "must not contain"),
        ("https://rpc.example:99999", "is not a URL"),
    ],
)
def test_a_bad_public_rpc_url_is_refused(url: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as exc:
        ChainSettings(public_rpc_url=url)
    assert exc.value.reason == "usage"
