"""`dyno repair` and the repair line of `dyno status`, against a fake admin port (an
HTTP server in this process answering scripted /repair progress): the request the
CLI sends, the progress it draws, the summary, the exit status, and one clear line
(never a traceback) for an answer that is an error, a refused connection, a port
that does not speak HTTP, or a node that goes away while watched."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

import support
from dyno import cli, status


def progress(**changes) -> dict:
    """A repair's progress as GET /repair answers it (dyno.repair.Repair.status)."""
    base = {
        "id": 1, "node": "n1", "dc": "dc1", "rack": None, "range": None,
        "replicas": ["n1", "n2", "n3"], "writable": ["n1", "n2", "n3"], "phase": "scanning",
        "running": True, "rate_limit": 0, "scanning": "n1", "passes": 3, "passes_done": 0,
        "keys_total": 1000, "keys_scanned": 0, "compared": 0, "repaired": 0, "deleted": 0,
        "skipped": 0, "changed": 0, "errors": 0, "error_samples": [], "error": None,
        "started": 1.7e9, "elapsed": 0.0, "rate": 0.0, "eta": None,
    }
    return {**base, **changes}


RUNNING = [progress(keys_scanned=100, compared=100, eta=9.0),
           progress(keys_scanned=550, compared=550, repaired=20, eta=4.1)]
DONE = progress(phase="done", running=False, scanning=None, passes_done=3, keys_scanned=1000,
                compared=1000, repaired=40, deleted=2, elapsed=12.5, eta=0.0)


class FakeAdmin:
    """An admin port that answers POST /repair with ``started`` (or ``post``: a
    status and a body) and GET /repair with the next of ``progress`` (the last one
    over and over); other paths from ``paths``."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        self.post: tuple[int, str] | None = None
        self.started = progress()
        self.progress = [*RUNNING, DONE]
        self.paths: dict[str, object] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                fake.requests.append(("POST", self.path))
                if fake.post is not None:
                    self.answer(*fake.post)
                else:
                    self.answer(202, json.dumps({"started": fake.started}))

            def do_GET(self):
                fake.requests.append(("GET", self.path))
                if self.path == "/repair":
                    body = fake.progress[0] if len(fake.progress) == 1 else fake.progress.pop(0)
                    self.answer(200, json.dumps(body))
                elif self.path in fake.paths:
                    self.answer(200, json.dumps(fake.paths[self.path]))
                else:
                    self.answer(404, "404 Not Found\n")

            def answer(self, code: int, body: str) -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def gets(self) -> int:
        return sum(1 for method, path in self.requests if (method, path) == ("GET", "/repair"))


@pytest.fixture
def admin():
    fake = FakeAdmin()
    fake.thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()
        fake.thread.join(10)


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    monkeypatch.setattr(cli, "POLL_INTERVAL", 0.001)


def run(*args: str):
    result = CliRunner().invoke(cli.main, ["repair", *args])
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result


def test_a_clean_repair_draws_progress_and_exits_0(admin):
    result = run("--node", admin.address, "--rack", "r2", "--range", "1:5", "--rate", "100")
    assert result.exit_code == 0, result.output
    assert admin.requests[0] == ("POST", "/repair?rack=r2&range=1%3A5&rate=100.0")
    assert admin.gets() == 3  # polled until the job ended
    # not a terminal: a line per tenth of the scan, then the summary on stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 3 and all(len(line) <= 80 for line in lines)
    assert lines[0].startswith("repair n1 [#") and " 10% 100 compared, 0 copied, ETA 9s" in lines[0]
    assert " 55% 550 compared, 20 copied, ETA 4s" in lines[1]
    assert "100% 1,000 compared, 42 copied" in lines[2] and "ETA" not in lines[2]
    assert result.stdout == (
        "repair 1 of n1 (every rack of dc1, all its ranges) done in 12s: 1,000 keys compared "
        "on 3 replicas (n1, n2, n3), 40 values and 2 deletes copied; no errors.\n"
    )


def test_on_a_terminal_one_line_is_redrawn(admin, monkeypatch):
    monkeypatch.setattr(cli, "_stderr_is_tty", lambda: True)
    result = run("--node", admin.address)
    assert result.exit_code == 0
    drawn = result.stderr.split("\r")[1:]
    assert len(drawn) == 3 and drawn[-1].endswith("\n") and not drawn[0].endswith("\n")


def test_errors_in_the_repair_exit_1_and_are_summarised(admin):
    admin.progress = [progress(phase="done", running=False, compared=10, repaired=1, errors=3, skipped=1,
                               error_samples=["n2: RESTORE_IF_NEWER failed: OOM command not allowed"])]
    result = run("--node", admin.address)
    assert result.exit_code == 1
    assert "1 copies refused by a replica holding a newer write" in result.stdout
    assert "3 errors (first: n2: RESTORE_IF_NEWER failed: OOM command not allowed)" in result.stdout


def test_an_unreachable_replica_exits_1_naming_it(admin):
    admin.progress = [progress(phase="failed", running=False, compared=500,
                               error="replica n3 is unreachable: 127.0.0.1:7003: Connection refused")]
    result = run("--node", admin.address)
    assert result.exit_code == 1
    assert "FAILED after 0s: replica n3 is unreachable: 127.0.0.1:7003: Connection refused. So far: 500 keys" \
        in result.stdout


def test_no_wait_starts_and_returns(admin):
    result = run("--node", admin.address, "--no-wait")
    assert result.exit_code == 0
    assert admin.gets() == 0
    assert result.stdout.startswith("repair 1 of n1 started (replicas: n1, n2, n3)")


@pytest.mark.parametrize("code, body", [
    (409, "409 Conflict: repair 3 is running already on n1 (phase scanning, 10 keys compared)\n"),
    (400, "400 Bad Request: range '5:5' is empty: START and END must differ\n"),
    (503, "503 Service Unavailable: repair not available on this node\n"),
])
def test_a_refused_start_is_one_line(admin, code, body):
    admin.post = (code, body)
    result = run("--node", admin.address, "--range", "5:5")
    assert result.exit_code == 1
    assert result.output == f"Error: {admin.address}: {body}"


def test_a_refused_connection_is_one_line():
    address = f"127.0.0.1:{support.free_port()}"
    result = run("--node", address)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: cannot reach the admin port at {address}: ")
    assert "refused" in result.output and result.output.count("\n") == 1


@contextlib.contextmanager
def resp_port():
    """A port answering every connection as a Redis or dyno client port would an
    HTTP request: an -ERR line, then close."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.02)  # so that the loop sees `stop`
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            with conn:
                conn.recv(65536)
                conn.sendall(b"-ERR unknown command 'POST', with args beginning with: '/repair'\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(10)
        listener.close()


def test_a_port_that_is_not_http_is_one_line():
    with resp_port() as address:
        result = run("--node", address)
        assert result.exit_code == 1
        assert result.output.startswith(f"Error: {address} does not answer HTTP (it answered \"-ERR ")
        assert result.output.endswith("is it a node's client or peer port? dyno wants a node's admin "
                                      "port (its stats_listen)\n")
        assert result.output.count("\n") == 1
        shown = CliRunner().invoke(cli.main, ["status", "--node", address])
        assert shown.exit_code == 1 and "Traceback" not in shown.output
        assert "does not answer HTTP" in shown.output


def test_a_node_lost_while_watched_is_one_line(admin):
    admin.progress = [RUNNING[0], progress(id=2)]  # the node restarted and ran another job
    result = run("--node", admin.address)
    assert result.exit_code == 1
    assert result.stderr.endswith(f"Error: {admin.address} no longer reports repair 1 (was the node "
                                  "restarted?); repair 1 may still be running on the node\n")


def test_the_progress_line_fits_its_width():
    for width in (40, 80, 120):
        for state in (*RUNNING, DONE, progress(keys_total=None), progress(keys_total=0)):
            line = status.repair_line(state, width)
            assert len(line) <= width and line.startswith("repair n1 [")
    assert "  ?%" in status.repair_line(progress(keys_total=None))
    assert "ETA 1h01m" in status.repair_line(progress(keys_scanned=500, eta=3660))


def test_status_shows_a_running_repair(admin):
    admin.paths = {
        "/cluster_describe": {"dcs": [{"name": "dc1", "racks": [{"name": "r1", "servers": [
            {"name": "n1", "host": "127.0.0.1", "port": 1, "token": 0, "tokens": [0], "state": "NORMAL",
             "up": True, "admin": admin.address}]}]}]},
        "/info": {"node": "n1", "state": "NORMAL", "keys": 1000, "ops_per_sec": 0.0, "latency_99th": 0},
    }
    admin.progress = [RUNNING[1]]
    gathered = status.gather_status([admin.address])
    assert gathered["repairs"] == [RUNNING[1]]
    shown = CliRunner().invoke(cli.main, ["status", "--node", admin.address])
    assert shown.exit_code == 0, shown.output
    assert "repair n1 [" in shown.output and "55% 550 compared, 20 copied, ETA 4s" in shown.output
    admin.progress = [DONE]
    assert status.gather_status([admin.address])["repairs"] == []
