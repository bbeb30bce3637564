"""The wire's lines (``protocol/lines.py``): a request found by its op without every module of
messages, so that a node's agent imports only what its operation needs."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest

from launcher.node.agent import HANDLERS
from launcher.protocol.codec import ProtocolError, decode, to_wire
from launcher.protocol.lines import OPS, decode_request, encode_request, request_type
from launcher.protocol.messages import Commit
from launcher.protocol.registry import REQUESTS
from launcher.protocol.sync import SyncChunk, SyncPut


def test_the_ops_table_names_every_request_of_every_module_of_messages() -> None:
    assert {op: (cls.__module__.rsplit(".", 1)[1], cls.__name__) for op, cls in REQUESTS.items()} == OPS
    assert all(request_type(op) is cls for op, cls in REQUESTS.items())
    assert set(HANDLERS) == set(OPS)  # the agent serves every op, and no other


def test_a_request_line_round_trips_and_an_unknown_op_is_refused() -> None:
    line = encode_request(Commit(job="j", address="10.0.0.1", env={"A": "b"}))
    assert decode_request(line) == Commit(job="j", address="10.0.0.1", env={"A": "b"})
    with pytest.raises(ProtocolError, match="unknown request 'sync_everything'"):
        decode_request('{"op": "sync_everything"}')


@pytest.mark.parametrize(
    "data",
    [base64.b64encode(bytes(range(256)) * 50).decode(), "", 'not "base64"\\', "two\nlines", "r\u00e9sum\u00e9"],
)
def test_a_sync_put_writes_the_line_json_would(data: str) -> None:
    """Its own line (megabytes of base64, once per host) is JSON's, byte for byte, or JSON's."""
    put = SyncPut(token='a "token"', chunks=[SyncChunk(0, 0, data), SyncChunk(7, 1 << 20, "QUJD")])
    line = encode_request(put)
    assert line == json.dumps({"op": put.op, **to_wire(put)}) + "\n"
    assert decode_request(line) == put
    assert (put.wire_line() is not None) == (data.isascii() and not any(c in data for c in '"\\\n'))


def test_the_agent_loads_no_module_its_operation_does_not_need() -> None:
    """A launch's agent (prepare, start, commit) never imports the sync's, the doctor's,
    the stacks' or the logs' messages and handlers: each costs CPU on every node."""
    script = (
        "import sys; from launcher.node import agent; from launcher.protocol.lines import decode_request;"
        ' decode_request(\'{"op": "commit", "job": "j"}\'); agent._module(\'start\');'
        " print(' '.join(sorted(m for m in sys.modules if m.startswith('launcher.'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert "launcher.node.start" in loaded
    for heavy in ("protocol.sync", "protocol.doctor", "node.sync", "node.doctor", "node.logs", "node.stack"):
        assert f"launcher.{heavy}" not in loaded, heavy


def test_the_supervisor_loads_no_message_but_its_own() -> None:
    """Every job starts one supervisor per host: it reads ``Teardown`` alone, and takes stacks
    (``--hang-timeout``) or kills stragglers with modules it imports only then."""
    script = "import sys; import launcher.node.supervisor; print(' '.join(m for m in sys.modules if 'launcher.' in m))"
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert "launcher.protocol.teardown" in loaded
    for heavy in ("protocol.messages", "node.stack", "node.processes"):
        assert f"launcher.{heavy}" not in loaded, heavy


def test_a_bad_value_deep_in_a_message_is_named_by_its_path() -> None:
    from launcher.protocol.logs import LogBatch, LogRecord
    from launcher.protocol.messages import NodeStatus

    good = [[1.5, 0, "o", "a"], [2, None, "e", "b"]]
    assert decode(LogBatch, {"records": good, "offset": 7}) == LogBatch(
        [LogRecord(1.5, 0, "o", "a"), LogRecord(2.0, None, "e", "b")], 7
    )
    cases = {
        "LogBatch.records[1].time: expected a number, got str": {"records": [good[0], ["x", 0, "o", "a"]]},
        "LogBatch.records[0].stream: 'x' is none of ('o', 'e')": {"records": [[1.0, 0, "x", "a"]]},
        "LogBatch.records[0]: expected 4 items, got 2": {"records": [[1.0, 0]]},
        "LogBatch.records[0].rank: unexpected str": {"records": [[1.0, "0", "o", "a"]]},
        "LogBatch.records: expected a JSON array, got dict": {"records": {}},
        "LogBatch: missing field 'records'": {"offset": 1},
    }
    for message, data in cases.items():
        with pytest.raises(ProtocolError) as raised:
            decode(LogBatch, data)
        assert str(raised.value) == message
    with pytest.raises(ProtocolError, match=r"^NodeStatus\.last_printed\.3: expected a number, got bool$"):
        decode(NodeStatus, {"state": "running", "hostname": "h", "last_printed": {"3": True}})
