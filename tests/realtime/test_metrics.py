"""Metrics over loopback: per-connection stats, error and close codes, /metrics, /stats, debug."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest

from tidewire.realtime import App, HMACVerifier
from tidewire.realtime.metrics import (
    PROMETHEUS_CONTENT_TYPE,
    DebugLog,
    Family,
    escape_label_value,
    render_prometheus,
)

from .conftest import SECRET, TIMEOUT, Peer, connect, next_disconnect, track_disconnects, user_token
from .httpkit import ADMIN_TOKEN, http

# --------------------------------------------------------------- a tiny Prometheus parser

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

Labels = tuple[tuple[str, str], ...]


def _unescape(text: str) -> str:
    return re.sub(r'\\[\\"n]', lambda m: _UNESCAPE[m.group()], text)


def parse_prometheus(text: str) -> dict[str, dict[str, Any]]:
    """Parse the text format strictly: HELP then TYPE before any sample of a family.

    Returns name -> {"help", "type", "samples": {labels: value}}; fails the test on
    any line that the format does not allow.
    """
    assert text.endswith("\n")
    families: dict[str, dict[str, Any]] = {}
    current: str | None = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in families, f"family {name} twice"
            families[name] = {"help": _unescape(help_text), "type": None, "samples": {}}
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name == current and kind in ("counter", "gauge"), line
            families[name]["type"] = kind
        else:
            match = _SAMPLE.fullmatch(line)
            assert match, f"not a sample line: {line!r}"
            name, label_text, value = match.groups()
            assert name == current and families[name]["type"], f"sample before TYPE: {line!r}"
            labels: list[tuple[str, str]] = []
            pos = 0
            while label_text and pos < len(label_text):
                found = _LABEL.match(label_text, pos)
                assert found, f"bad labels in {line!r}"
                labels.append((found.group(1), _unescape(found.group(2))))
                pos = found.end()
            key: Labels = tuple(labels)
            assert key not in families[name]["samples"], f"duplicate sample {line!r}"
            families[name]["samples"][key] = float(value)
    return families


def value_of(families: dict[str, dict[str, Any]], name: str, **labels: str) -> float:
    """The value of one sample (labels as keyword arguments)."""
    return float(families[name]["samples"][tuple(labels.items())])


# --------------------------------------------------------------------------- rendering


def test_render_escapes_labels_and_help_and_the_parser_gets_them_back() -> None:
    """Backslash, quote and newline in label values and help survive a round trip."""
    nasty = 'a"b\\c\nd'
    text = render_prometheus(
        [
            Family("x_total", "counter", "line one\nline \\two", ((((("code", nasty),)), 3),)),
            Family.labelled("y", "gauge", "by kind", "kind", {"b": 2.5, "a": float("inf")}),
            Family.single("z", "gauge", "nan", float("nan")),
        ]
    )
    assert 'x_total{code="a\\"b\\\\c\\nd"} 3\n' in text
    assert escape_label_value(nasty) == 'a\\"b\\\\c\\nd'
    assert "# HELP x_total line one\\nline \\\\two\n" in text
    assert 'y{kind="a"} +Inf\ny{kind="b"} 2.5\n' in text  # labelled samples come sorted
    families = parse_prometheus(text)
    assert families["x_total"]["help"] == "line one\nline \\two"
    assert value_of(families, "x_total", code=nasty) == 3
    assert value_of(families, "y", kind="b") == 2.5
    assert "z NaN\n" in text


@pytest.mark.parametrize(
    "family",
    [
        Family("bad-name", "gauge", "h"),
        Family("ok", "histogram", "h"),
        Family("ok", "gauge", "h", (((("bad-label", "v"),), 1),)),
        Family("ok", "gauge", "h", (((("__reserved", "v"),), 1),)),
    ],
)
def test_render_refuses_what_prometheus_would(family: Family) -> None:
    """Invalid metric names, types and label names raise ValueError instead of bad output."""
    with pytest.raises(ValueError):
        render_prometheus([family])


# --------------------------------------------------------------------- debug ring buffer


def test_debug_log_is_a_bounded_ring() -> None:
    """Only the last ``size`` entries stay, each cut to ``entry_bytes`` at a character edge."""
    log = DebugLog(3, 8)
    for n in range(5):
        log.add("in", f"message {n}", 9, float(n))
    log.add("out", "ééééé", 10, 5.0)  # 10 UTF-8 bytes: cut to 4 whole characters
    log.add("in", b"\x00\x01\x02\x03\x04\x05", 6, 6.0)
    entries = log.export()
    assert log.recorded == 7 and len(entries) == 3
    assert entries[0] == {
        "at": 4.0,
        "direction": "in",
        "size": 9,
        "data": "message ",
        "truncated": True,
    }
    assert entries[1] == {
        "at": 5.0,
        "direction": "out",
        "size": 10,
        "data": "éééé",
        "truncated": True,
    }
    assert entries[2] == {
        "at": 6.0,
        "direction": "in",
        "size": 6,
        "data": "00010203",
        "truncated": True,
        "binary": True,
    }
    with pytest.raises(ValueError):
        DebugLog(0, 10)


# ------------------------------------------------------------------- live connections


async def test_per_connection_counters_match_the_traffic() -> None:
    """Messages and payload bytes, both ways, rooms and activity times match what was sent."""
    app = App(admin_token=ADMIN_TOKEN, rate_limits=None)
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server, compression=None) as peer,
    ):
        received = [json.dumps(peer.hello, separators=(",", ":"))]
        sent: list[str] = []
        started = time.time()
        for n in range(3):
            text = json.dumps({"type": "ping", "id": n, "pad": "é" * n})
            sent.append(text)
            await peer.ws.send(text)
            received.append(await asyncio.wait_for(peer.ws.recv(), TIMEOUT))  # type: ignore[arg-type]
        join = json.dumps({"type": "join", "room": "lobby"})
        sent.append(join)
        await peer.ws.send(join)
        received.append(await asyncio.wait_for(peer.ws.recv(), TIMEOUT))  # type: ignore[arg-type]
        await app.emit_room("lobby", {"type": "news", "text": "fan-out ü"})  # the hub's path
        received.append(await asyncio.wait_for(peer.ws.recv(), TIMEOUT))  # type: ignore[arg-type]

        answer = await http(server, "GET", f"/debug/connections/{peer.id}", token=ADMIN_TOKEN)
        assert answer.status == 200
        export = answer.json()
        stats = export["connection"]
        assert (export["debug"], export["log"]) == (False, None)
        assert stats["id"] == peer.id and stats["ip"] == "127.0.0.1" and stats["user"] is None
        assert stats["messages_in"] == len(sent)
        assert stats["messages_out"] == len(received)
        assert stats["payload_bytes_in"] == sum(len(t.encode()) for t in sent)
        assert stats["payload_bytes_out"] == sum(len(t.encode()) for t in received)
        assert stats["bytes_in"] > stats["payload_bytes_in"]  # handshake, headers, masks
        assert stats["bytes_out"] > stats["payload_bytes_out"]
        assert stats["rooms"] == ["lobby"] and stats["channels"] == []
        assert stats["compression"] is None and stats["compression_ratio"] is None
        assert stats["drops"] == 0 and stats["errors"] == 0 and stats["buffered_amount"] == 0
        # Times are rounded to the millisecond.
        assert started - 5 < stats["connected_at"] <= started + 0.001
        assert started - 0.001 <= stats["last_activity"] <= time.time() + 0.001
        assert stats["latency"] >= 0.0


async def test_compression_ratio_when_deflate_is_on() -> None:
    """With permessage-deflate, repetitive payloads give a wire/payload ratio well below 1."""
    app = App(rate_limits=None)
    async with app.serve("127.0.0.1", 0) as server, connect(server) as peer:
        for _ in range(3):
            await app.emit_connection(peer.id, {"type": "blob", "data": "tidewire " * 2000})
            await peer.recv()
        record = app.metrics.connections[peer.id]
        stats = app.metrics.connection(record)
    assert stats["compression"] == "permessage-deflate"
    assert 0 < stats["compression_ratio"] < 0.1


async def test_error_codes_and_close_codes_are_counted() -> None:
    """Error envelopes count by code; closes count by the code the connection ended with."""
    app = App(rate_limits=None)
    gone = track_disconnects(app)
    async with app.serve("127.0.0.1", 0) as server:
        async with connect(server) as peer:
            await peer.ws.send("{broken")
            assert (await peer.recv())["code"] == "bad_json"
            await peer.send({"type": "nobody_handles_this"})
            assert (await peer.recv())["code"] == "unknown_type"
            await peer.send({"type": "leave", "room": "never-joined"})
            assert (await peer.recv())["code"] == "not_member"
            assert app.metrics.connections[peer.id].errors == 3
            await peer.ws.close(3001, "bye")
        await next_disconnect(gone)
        async with connect(server) as dropped:
            dropped.ws.transport.abort()  # no close frame at all
        await next_disconnect(gone)
        async with connect(server):
            pass
        await next_disconnect(gone)
    assert app.metrics.errors == {"bad_json": 1, "unknown_type": 1, "not_member": 1}
    assert app.metrics.close_codes == {3001: 1, 1006: 1, 1000: 1}
    assert app.metrics.connections == {}


async def test_metrics_endpoint_parses_and_counts() -> None:
    """/metrics is valid exposition text whose gauges and counters follow the traffic."""
    app = App(admin_token=ADMIN_TOKEN, rate_limits=None)
    gone = track_disconnects(app)
    async with app.serve("127.0.0.1", 0) as server:
        async with connect(server) as a, connect(server) as b:
            await a.join("lobby")
            await b.ws.send("not json")
            await b.recv()
            await a.request({"type": "subscribe", "channel": "news"})
            await app.publish("news", 1)
            await a.recv()
            answer = await http(server, "GET", "/metrics", token=ADMIN_TOKEN)
            assert answer.status == 200
            assert answer.headers["content-type"] == PROMETHEUS_CONTENT_TYPE
            live = parse_prometheus(answer.text)
        for _ in range(2):
            await next_disconnect(gone)
        after = parse_prometheus((await http(server, "GET", "/metrics", token=ADMIN_TOKEN)).text)
    assert live["tidewire_connections"]["type"] == "gauge"
    assert live["tidewire_messages_received_total"]["type"] == "counter"
    assert value_of(live, "tidewire_connections") == 2
    assert value_of(live, "tidewire_rooms") == 1 and value_of(live, "tidewire_channels") == 1
    assert value_of(live, "tidewire_connections_opened_total") == 2
    assert value_of(live, "tidewire_errors_total", code="bad_json") == 1
    assert value_of(live, "tidewire_events_total", event="publications") == 1
    assert value_of(live, "tidewire_messages_received_total") == 3
    assert live["tidewire_closes_total"]["samples"] == {}
    assert value_of(after, "tidewire_connections") == 0
    assert value_of(after, "tidewire_closes_total", code="1000") == 2
    # Totals keep the traffic of closed connections.
    assert value_of(after, "tidewire_messages_received_total") == 3
    assert value_of(after, "tidewire_received_bytes_total") >= value_of(
        live, "tidewire_received_bytes_total"
    )
    assert value_of(after, "tidewire_http_requests_total", endpoint="metrics", status="200") == 1


async def test_stats_lists_the_busiest_connections_and_rooms() -> None:
    """/stats?top=N ranks connections by messages and rooms by messages, then members."""
    app = App(admin_token=ADMIN_TOKEN, rate_limits=None)
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server) as quiet,
        connect(server) as busy,
        connect(server) as middling,
    ):
        for peer, count in ((busy, 6), (middling, 3)):
            for _ in range(count):
                await peer.barrier()
        for peer in (quiet, busy, middling):
            await peer.join("big")
        assert (await busy.recv())["type"] == "userJoined"  # middling's
        await busy.join("small")
        for _ in range(3):
            await app.emit_room("small", {"type": "tick"})
            await busy.recv()
        answer = await http(server, "GET", "/stats?top=2", token=ADMIN_TOKEN)
        assert answer.status == 200
        stats = answer.json()
        bad = [
            await http(server, "GET", f"/stats?top={v}", token=ADMIN_TOKEN) for v in (0, 101, "x")
        ]
    assert [c["id"] for c in stats["top_connections"]] == [busy.id, middling.id]
    assert [(r["room"], r["messages"]) for r in stats["top_rooms"]] == [("small", 4), ("big", 3)]
    assert stats["top_rooms"][1]["connections"] == 3 and stats["top_rooms"][1]["users"] == 3
    assert (stats["connections"], stats["rooms"], stats["users"]) == (3, 2, 0)
    assert stats["totals"]["messages_in"] == 6 + 3 + 4
    assert stats["events"]["connections"] == 3
    assert [b.status for b in bad] == [400, 400, 400]


async def test_debug_log_keeps_the_last_messages_and_redacts_tokens() -> None:
    """In debug mode /debug/connections/{id} exports a bounded log, tokens redacted."""
    app = App(
        admin_token=ADMIN_TOKEN,
        debug=True,
        debug_log_size=4,
        debug_entry_bytes=40,
        auth=HMACVerifier(SECRET),
        auth_required=False,
        rate_limits=None,
    )
    gone = track_disconnects(app)
    token = user_token("ann")
    async with app.serve("127.0.0.1", 0) as server:
        async with connect(server) as peer:
            await peer.request({"type": "auth", "token": token})
            for n in range(3):
                await peer.request({"type": "ping", "id": n, "pad": "x" * 100})
            answer = await http(server, "GET", f"/debug/connections/{peer.id}", token=ADMIN_TOKEN)
            export = answer.json()
            log = export["log"]
            assert export["debug"] is True and export["recorded"] == 1 + 2 + 2 * 3
            assert len(log) == 4
            assert [e["direction"] for e in log] == ["in", "out", "in", "out"]
            assert log[-2]["data"].startswith('{"type": "ping", "id": 2')
            assert log[-2]["truncated"] is True and len(log[-2]["data"].encode()) <= 40
            assert log[-1] == {
                "at": log[-1]["at"],
                "direction": "out",
                "size": len('{"type":"pong","id":2}'),
                "data": '{"type":"pong","id":2}',
            }
            session_id = peer.id
            assert token not in answer.text
        assert await next_disconnect(gone) == session_id
        closed = await http(server, "GET", f"/debug/connections/{session_id}", token=ADMIN_TOKEN)
        missing = await http(server, "GET", "/debug/connections/nope", token=ADMIN_TOKEN)
    assert closed.status == 200 and closed.json()["connection"]["close_code"] == 1000
    assert (missing.status, missing.json()["error"]) == (404, "no_connection")


async def test_auth_token_is_redacted_in_the_log() -> None:
    """An ``auth`` message is logged with its token replaced."""
    app = App(debug=True, auth=HMACVerifier(SECRET), auth_required=False, rate_limits=None)
    token = user_token("bob")
    async with app.serve("127.0.0.1", 0) as server, connect(server) as peer:
        await peer.request({"type": "auth", "token": token, "id": 7})
        log = app.metrics.find(peer.id)
    assert log is not None
    first_in = next(e for e in log["log"] if e["direction"] == "in")
    assert json.loads(first_in["data"]) == {"type": "auth", "token": "[redacted]", "id": 7}
    assert token not in json.dumps(log)


async def test_peer_helper_session_lookup_matches_metrics() -> None:
    """Each open session has exactly one metrics record, dropped when it closes."""
    app = App(rate_limits=None)
    gone = track_disconnects(app)
    async with app.serve("127.0.0.1", 0) as server:
        peers: list[Peer] = []
        async with connect(server) as a, connect(server) as b:
            peers = [a, b]
            assert set(app.metrics.connections) == {a.id, b.id}
            assert all(app.metrics.connections[p.id].session is p.session(app) for p in peers)
        for _ in peers:
            await next_disconnect(gone)
    assert app.metrics.connections == {} and app.metrics._by_ws == {}
