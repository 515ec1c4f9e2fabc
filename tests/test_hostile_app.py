"""Hostile input (issue 6) against the launched app: `/gradio_api/file=` serves no data file and
fetches nothing, oversize uploads and forged file paths store nothing, with login on nobody
labels, undoes or overwrites as someone else, and in the real browser no request from the page
reaches a local listener and nothing injected runs.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

import pytest
from hostile import (
    GOOD,
    assert_inert,
    dataset_names,
    import_hostile,
    pair_ids,
    store_judgment,
    write,
)

from services import Services
from settings import load_settings
from storage import queries

# --- the launched app: file serving, uploads, forged paths ------------------------------------


def open_services(home: Path, **settings_values: Any) -> Services:
    """Services over a fresh SQLite file in `home`, on a free loopback port."""
    from tests.served import free_port

    settings = load_settings(home=home, database_url=None, port=free_port(), **settings_values)
    return Services.open(settings)


def serve_app(services: Services) -> tuple[Any, str]:
    """The whole app over `services`, launched with the product's own options; (demo, url)."""
    from app import build_app, serve

    demo = build_app(services)
    _, url = serve(demo, services.settings, prevent_thread_lock=True, quiet=True)
    return demo, url


@pytest.fixture(scope="module")
def plain_app(tmp_path_factory) -> Iterator[SimpleNamespace]:
    """The real app (no login, no judge loaded, a 1 MB upload limit) over a real SQLite file,
    with a hostile pair and a fake adapter file under the runs directory."""
    home = tmp_path_factory.mktemp("hostile-home")
    services = open_services(home / "grm", max_import_mb=1)
    rows = [{key: f"{key} <img src=x onerror=alert(1)> ![i](http://127.0.0.1:9/i.png)"
             for key in GOOD}]  # fmt: skip
    import_hostile(services, home, "wire", rows)
    adapter = services.runs_dir() / "1" / "adapter" / "adapter_model.safetensors"
    adapter.parent.mkdir(parents=True)
    adapter.write_bytes(b"ADAPTER-SECRET-BYTES")
    demo, url = serve_app(services)
    yield SimpleNamespace(url=url, services=services, settings=services.settings, adapter=adapter)
    demo.close()


def http_get(url: str, raw_path: str) -> tuple[int, bytes]:
    """GET with the path sent byte for byte (no client-side '..' clean-up)."""
    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    try:
        connection.request("GET", raw_path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _probes(app: SimpleNamespace) -> dict[str, str]:
    home = app.settings.home.resolve()
    db = home / "grm.sqlite3"
    climb = "/.." * 12
    encoded = str(db).replace("/", "%2f")
    return {
        "db-absolute": f"/gradio_api/file={db}",
        "db-dotdot-from-upload-dir": f"/gradio_api/file=/tmp/gradio{climb}{db}",
        "db-url-encoded-dotdot": f"/gradio_api/file=%2e%2e/%2e%2e{'/%2e%2e' * 12}{db}",
        "db-encoded-slashes": f"/gradio_api/file=..%2f..%2f..%2f..{encoded}",
        "db-other-case": f"/gradio_api/file={str(db).upper()}",
        "db-file-scheme": f"/gradio_api/file=file://{db}",
        "db-old-route": f"/file={db}",
        "data-dir": f"/gradio_api/file={home}",
        "data-dir-trailing-dot": f"/gradio_api/file={home}/.",
        "adapter": f"/gradio_api/file={app.adapter}",
        "adapter-dotdot": f"/gradio_api/file={app.adapter.parent}/../adapter/{app.adapter.name}",
        "relative-from-cwd": f"/gradio_api/file={os.path.relpath(db)}",
        "process-environment": "/gradio_api/file=/proc/self/environ",
    }


PROBES = [
    "db-absolute",
    "db-dotdot-from-upload-dir",
    "db-url-encoded-dotdot",
    "db-encoded-slashes",
    "db-other-case",
    "db-file-scheme",
    "db-old-route",
    "data-dir",
    "data-dir-trailing-dot",
    "adapter",
    "adapter-dotdot",
    "relative-from-cwd",
    "process-environment",
]


@pytest.mark.slow
@pytest.mark.parametrize("probe", PROBES)
def test_file_route_never_serves_the_database_data_dir_or_adapters(plain_app, probe) -> None:
    status, body = http_get(plain_app.url, _probes(plain_app)[probe])
    assert status in (403, 404), (status, body[:200])
    assert b"SQLite format 3" not in body and b"ADAPTER-SECRET" not in body
    assert set(json.loads(body)) == {"detail"}, body[:200]  # an error, never the file


@pytest.fixture
def listener() -> Iterator[SimpleNamespace]:
    """A local HTTP server standing in for 'the outside': every request it gets is recorded."""
    hits: list[str] = []

    class Record(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Record)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(base=f"http://127.0.0.1:{server.server_address[1]}", hits=hits)
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_file_route_fetches_no_url_for_a_caller(plain_app, listener) -> None:
    status, _ = http_get(plain_app.url, f"/gradio_api/file={listener.base}/via-server.png")
    assert status in (403, 404)
    assert listener.hits == []


@pytest.mark.slow
def test_oversize_upload_is_refused_and_nothing_is_stored(plain_app, tmp_path) -> None:
    import httpx
    from gradio_client import Client, handle_file

    before = plain_app.services.stats()
    line = json.dumps({**GOOD, "response_a": "x" * 1000}) + "\n"
    big = write(tmp_path / "big.jsonl", (line * 1600).encode())  # 1.6 MB, over the 1 MB limit

    with big.open("rb") as handle:
        answer = httpx.post(f"{plain_app.url}gradio_api/upload", files={"files": handle})
    assert answer.status_code == 413, answer.text
    assert "maximum allowed size" in answer.text
    client = Client(plain_app.url, verbose=False, analytics_enabled=False, download_files=False)
    # The client checks the app's limit before it uploads (the server's own 413 is above).
    with pytest.raises(ValueError, match="exceeds the maximum file size of 1048576 bytes"):
        client.predict(handle_file(str(big)), "big", "auto", api_name="/import_file")
    assert plain_app.services.stats() == before
    assert "big" not in dataset_names(plain_app.services)


def _call(url: str, api_name: str, data: list) -> str:
    """One event through Gradio's REST API; the event stream's text."""
    import httpx

    started = httpx.post(f"{url}gradio_api/call/{api_name}", json={"data": data}, timeout=30)
    started.raise_for_status()
    event_id = started.json()["event_id"]
    return httpx.get(f"{url}gradio_api/call/{api_name}/{event_id}", timeout=60).text


@pytest.mark.slow
@pytest.mark.parametrize("target", ["database", "adapter", "system-file"])
def test_import_of_a_forged_server_path_is_refused_and_stores_nothing(plain_app, target) -> None:
    path = {
        "database": plain_app.settings.home.resolve() / "grm.sqlite3",
        "adapter": plain_app.adapter,
        "system-file": Path("/etc/passwd"),
    }[target]
    before = plain_app.services.stats()
    forged = {"path": str(path), "meta": {"_type": "gradio.FileData"}, "orig_name": "x.jsonl"}

    events = _call(plain_app.url, "import_file", [forged, "stolen", "auto"])

    assert "event: error" in events and "Imported" not in events
    assert "root:" not in events and "SQLite format" not in events
    assert plain_app.services.stats() == before
    assert "stolen" not in dataset_names(plain_app.services)


@pytest.mark.slow
def test_hostile_pair_arrives_inert_over_the_api(plain_app) -> None:
    from gradio_client import Client

    client = Client(plain_app.url, verbose=False, analytics_enabled=False, download_files=False)
    client.predict("wire-reader", api_name="/set_annotator")
    screen = client.predict(0, api_name="/next_pair")
    assert "data-pair-id" in screen[0]
    for markup in screen[:4]:
        assert_inert(markup)
    assert "&lt;img src=x onerror=alert(1)&gt;" in screen[2]
    assert "[image: i — http://127.0.0.1:9/i.png]" in screen[3]


# --- with login on: nobody acts as someone else ------------------------------------------------


@pytest.fixture
def auth_app(tmp_path) -> Iterator[SimpleNamespace]:
    """The app with login on for ana and ben (demo pairs, no judge loaded)."""
    services = open_services(tmp_path / "auth", auth="ana:pw-a,ben:pw-b")
    services.load_demo_if_empty()
    demo, url = serve_app(services)
    yield SimpleNamespace(url=url, services=services)
    demo.close()


def login(url: str, user: str, password: str):
    from gradio_client import Client

    return Client(url, auth=(user, password), verbose=False, analytics_enabled=False)


def labels(services: Services) -> set[tuple[int, str, str]]:
    with services.sessions.begin() as s:
        return {(r["pair_id"], r["annotator"], r["label"]) for r in queries.labeled_records(s)}


def shown_pair(screen: tuple) -> int:
    return int(screen[0].split('data-pair-id="')[1].split('"')[0])


@pytest.mark.slow
def test_with_login_another_user_cannot_undo_or_overwrite_a_label(auth_app) -> None:
    ana = login(auth_app.url, "ana", "pw-a")
    first = shown_pair(ana.predict(0, api_name="/next_pair"))
    ana.predict(0, "", "", api_name="/label_A")

    ben = login(auth_app.url, "ben", "pw-b")
    ben.predict("ana", api_name="/set_annotator")  # claims to be ana: ignored
    undone = ben.predict(0, api_name="/undo")
    assert "Nothing to undo" in undone[-1]
    assert shown_pair(ben.predict(0, api_name="/next_pair")) == first  # ben's own queue
    ben.predict(0, "ben's view", "", api_name="/label_B")

    assert labels(auth_app.services) == {(first, "ana", "A"), (first, "ben", "B")}
    ben.predict(0, api_name="/undo")  # takes back ben's label only
    assert labels(auth_app.services) == {(first, "ana", "A")}


@pytest.mark.slow
def test_with_login_a_wrong_password_or_no_session_stores_nothing(auth_app) -> None:
    import httpx

    with pytest.raises(ValueError, match="Could not login to"):
        login(auth_app.url, "ana", "wrong")
    answer = httpx.post(f"{auth_app.url}gradio_api/call/label_A", json={"data": [0, "", ""]})
    assert answer.status_code in (401, 403)
    assert labels(auth_app.services) == set()


# --- the real browser: markdown images and raw <img> fetch nothing -----------------------------


@pytest.mark.browser
@pytest.mark.slow
def test_browser_fetches_nothing_from_outside_and_runs_nothing(
    browser, plain_app, listener, tmp_path
) -> None:
    from test_browser import choose_dataset, open_desk

    out = listener.base
    leak = f'![x]({out}/leak.png) <img src="{out}/img" onerror="window.__pwned=1">'
    row = {
        "prompt": f"Look: {leak}",
        "response_a": f"A {leak} [ref][r]\n\n[r]: {out}/ref.png",
        "response_b": f"plain B ![b][i]\n\n[i]: {out}/ri.png\n\n<iframe src='{out}/f'></iframe>",
        "category": f'<img src="{out}/category">',
    }
    dataset = f"leak-{uuid.uuid4().hex[:6]}"
    dataset_id = import_hostile(plain_app.services, tmp_path, dataset, [row])
    (pair_id,) = pair_ids(plain_app.services, dataset_id)
    store_judgment(
        plain_app.services,
        pair_id,
        principles=f'judge-marker <img src="{out}/judge" onerror="window.__pwned=2">',
        critique=f"![c]({out}/critique.png) <svg onload='window.__pwned=3'></svg>",
    )
    plain_app.services.save_label(pair_id, "someone", "A", note=f'<img src="{out}/note">')

    page = open_desk(browser, plain_app.url, "leak-check")
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    choose_dataset(page, dataset)
    page.wait_for_function(
        "() => (document.querySelector('#grm-response-b') || {}).innerText?.includes('plain B')"
    )
    page.wait_for_function(
        "() => document.querySelector('#grm-principles')?.innerText.includes('judge-marker')"
    )
    page.get_by_text("History of this pair").click()
    page.wait_for_function(
        "() => (document.querySelector('#grm-history') || {}).innerText?.includes('someone')"
    )
    time.sleep(1.0)  # give any image load or injected handler the chance to run

    assert listener.hits == [], f"the page fetched from the listener: {listener.hits}"
    assert page.evaluate("() => window.__pwned") is None
    areas = ", ".join(
        f"#grm-{part} img, #grm-{part} iframe, #grm-{part} svg"
        for part in ("meta", "prompt", "response-a", "response-b", "principles", "critique",
                     "history")
    )  # fmt: skip
    assert page.locator(areas).count() == 0
    assert f"{out}/leak.png" in page.inner_text("#grm-prompt")  # shown as text instead
    app_host = urlparse(plain_app.url).netloc
    strangers = [u for u in requests if urlparse(u).scheme in ("http", "https")]
    assert all(urlparse(u).netloc == app_host for u in strangers), strangers

    # Control: the same page can reach the listener, so the silence above means something.
    page.evaluate("url => { new Image().src = url; }", f"{out}/control.png")
    deadline = time.monotonic() + 30
    while not listener.hits and time.monotonic() < deadline:
        time.sleep(0.05)
    assert listener.hits == ["/control.png"]
    page.context.close()
