"""The endpoints file (extproc/discovery/_file.py) and the fleet it applies: parsing, table-driven; the watcher
applies a changed file, keeps the last good fleet on a bad one and logs it once; Fleet.apply reaches the
datastore, the poller and the endpoint-picker destinations."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from extproc.config import Backend, Settings
from extproc.datastore.poller import BackendPoller
from extproc.discovery import EndpointsFile, Fleet, parse_endpoints
from extproc.reporting import NullReporter
from extproc.server import build_router

GOOD = [
    ("endpoints:\n  - {name: a, url: 'http://10.0.0.1:8000'}\n  - {url: 'http://10.0.0.2:8001/'}\n",
     (Backend("a", "http://10.0.0.1:8000"), Backend("10.0.0.2:8001", "http://10.0.0.2:8001"))),
    ('["http://10.0.0.1:8000"]', (Backend("10.0.0.1:8000", "http://10.0.0.1:8000"),)),
    ('{"endpoints": [{"name": "x", "url": "https://h:443"}]}', (Backend("x", "https://h:443"),)),
]
BAD = [
    ("endpoints: [ {url: ", "not YAML"),
    ("42", "expected a list"),
    ("endpoints: []", "no endpoints"),
    ("endpoints: [{url: 'http://10.0.0.1'}]", "http(s)://host:port"),
    ("endpoints: [{url: 'ftp://10.0.0.1:21'}]", "http(s)://host:port"),
    ("endpoints: [{name: a, url: 'http://h:1'}, {name: a, url: 'http://h:2'}]", "duplicate"),
    ("endpoints: [{url: 'http://h:1', weight: 2}]", "unknown keys"),
    ("endpoints: [{name: '', url: 'http://h:1'}]", "'name'"),
]


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_good_files(text: str, expected: tuple[Backend, ...]) -> None:
    assert parse_endpoints(text) == expected


@pytest.mark.parametrize(("text", "problem"), BAD)
def test_bad_files_name_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        parse_endpoints(text)


def test_watcher_keeps_the_last_good_fleet_and_logs_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "endpoints.yaml"
    path.write_text("endpoints: [{name: a, url: 'http://10.0.0.1:8000'}]")
    applied: list[list[str]] = []
    watcher = EndpointsFile(path, lambda backends: applied.append([b.cluster for b in backends]))
    assert [b.cluster for b in watcher.initial()] == ["a"]
    assert not watcher.check()  # unchanged
    path.write_text("endpoints: [{name: a, url: 'http://10.0.0.1:8000'}, {name: b, url: 'http://10.0.0.2:8000'}]")
    assert watcher.check() and applied == [["a", "b"]]
    caplog.set_level(logging.ERROR, "extproc.discovery")
    path.write_text("endpoints: [ {url: ")
    assert not watcher.check() and not watcher.check() and not watcher.check()
    path.unlink()
    assert not watcher.check()
    assert applied == [["a", "b"]] and watcher.errors == 2  # one per distinct bad content (broken, then missing)
    assert len([r for r in caplog.records if "rejected" in r.getMessage()]) == 2
    path.write_text("endpoints: [{name: c, url: 'http://10.0.0.3:8000'}]")
    assert watcher.check() and applied[-1] == ["c"]


def test_initial_bad_file_fails_the_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--endpoints-file"):
        EndpointsFile(tmp_path / "missing.yaml", lambda _: None).initial()


def test_fleet_apply_reaches_datastore_poller_and_destinations() -> None:
    first = (Backend("a", "http://10.0.0.1:8000"), Backend("b", "http://10.0.0.2:8000"))
    settings = Settings(backends=first, destination_mode="endpoint", prefix_routing=True)
    router = build_router(settings, NullReporter())
    poller = BackendPoller(first, interval=1.0, timeout=1.0, publish=router.endpoints.publish,
                           on_change=router.endpoints.set_healthy, dynamic=True)
    fleet = Fleet(router.endpoints, router.director, poller)
    fleet.backends = first
    assert fleet.apply((Backend("b", "http://10.0.0.2:8000"), Backend("c", "http://10.0.0.3:9000")))
    assert router.endpoints.instances == ("b", "c")
    assert router.endpoints.candidates() == ["b"]  # c is down until its first scrape
    assert [b.cluster for b in poller.backends] == ["b", "c"]
    assert router.director.destinations is not None and router.director.destinations["c"] == "10.0.0.3:9000"
    router.endpoints.set_healthy("c", True)
    router.metrics.decisions["c", "new_workflow"].inc()  # the new instance's series exist
    assert not fleet.apply(fleet.backends) and not fleet.apply(())


def test_a_dynamic_fleet_needs_endpoint_mode() -> None:
    with pytest.raises(ValueError, match="destination-mode endpoint"):
        Settings(endpoints_file="x.yaml").validate()
    with pytest.raises(ValueError, match="choose one"):
        Settings(endpoints_file="x.yaml", k8s_label_selector="app=vllm", destination_mode="endpoint").validate()
    Settings(endpoints_file="x.yaml", destination_mode="endpoint").validate()  # --backends not checked then


def test_a_host_name_is_rejected_in_endpoint_mode(tmp_path: Path) -> None:
    # ORIGINAL_DST connects to an ip:port and resolves no names: such a file is a bad file (fleet kept).
    first = (Backend("a", "http://10.0.0.1:8000"),)
    router = build_router(Settings(backends=first, destination_mode="endpoint"), NullReporter())
    fleet = Fleet(router.endpoints, router.director)
    fleet.backends = first
    path = tmp_path / "endpoints.yaml"
    path.write_text("endpoints: [{name: a, url: 'http://10.0.0.1:8000'}]")
    watcher = EndpointsFile(path, fleet.apply)
    watcher.initial()
    path.write_text("endpoints: [{name: b, url: 'http://vllm-b.svc:8000'}]")
    assert not watcher.check() and watcher.errors == 1
    assert router.endpoints.instances == ("a",)
