"""The endpoints file: the fleet as a YAML (or JSON) document, watched for changes.

Format (docs/kubernetes.md)::

    endpoints:
      - name: vllm-1                 # optional: default "<host>:<port>"
        url: http://10.0.0.11:8000
      - url: http://10.0.0.12:8000

A bare list of such entries (or of URL strings) is accepted too. In Kubernetes the file is a key of a ConfigMap
mounted as a volume: the kubelet swaps it atomically (a symlink flip), so a read sees the old or the new file,
never half of one. The watcher re-reads it every ``interval`` seconds and applies it when its content changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from extproc.config import Backend

log = logging.getLogger("extproc.discovery")

DEFAULT_INTERVAL_S = 0.5


def parse_endpoints(text: str) -> tuple[Backend, ...]:
    """The backends of an endpoints file; ValueError naming the problem (and the entry)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"not YAML/JSON: {error}") from None
    entries = data.get("endpoints") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError("expected a list of endpoints, or a mapping with an 'endpoints' list")
    backends: list[Backend] = []
    for index, entry in enumerate(entries):
        where = f"endpoints[{index}]"
        if isinstance(entry, str):
            entry = {"url": entry}
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping with 'url' (and optionally 'name')")
        unknown = set(entry) - {"name", "url"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        url = entry.get("url")
        if not isinstance(url, str) or not url:
            raise ValueError(f"{where}: 'url' must be a non-empty string")
        parsed = urllib.parse.urlsplit(url)
        try:
            port = parsed.port
        except ValueError:
            port = None
        if parsed.scheme not in ("http", "https") or not parsed.hostname or port is None:
            raise ValueError(f"{where}: 'url' must be http(s)://host:port, got {url!r}")
        name = entry.get("name", f"{parsed.hostname}:{port}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: 'name' must be a non-empty string")
        backends.append(Backend(name, url.rstrip("/")))
    if not backends:
        raise ValueError("no endpoints (the router cannot route without an instance)")
    names = [b.cluster for b in backends]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate endpoint names {duplicates}")
    return tuple(backends)


class EndpointsFile:
    """Reads ``path`` now (``initial``) and then every ``interval`` seconds; calls ``apply`` with each new valid
    fleet. A bad file keeps the last good fleet and is logged once (until its content changes again)."""

    def __init__(self, path: str | Path, apply: Callable[[Sequence[Backend]], object],
                 interval: float = DEFAULT_INTERVAL_S) -> None:
        self.path = Path(path)
        self.apply = apply
        self.interval = interval
        self.errors = 0
        self._seen: str | None = None
        self._task: asyncio.Task[None] | None = None

    def initial(self) -> tuple[Backend, ...]:
        """The fleet at start; ValueError when the file cannot be read or does not parse (start fails)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as error:
            raise ValueError(f"--endpoints-file {self.path}: {error.strerror or error}") from None
        try:
            backends = parse_endpoints(text)
        except ValueError as error:
            raise ValueError(f"--endpoints-file {self.path}: {error}") from None
        self._seen = text
        return backends

    def check(self) -> bool:
        """Read the file once; True when a new fleet was applied."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as error:
            text = f"\0unreadable: {error}"  # a distinct "content": logged once, the fleet kept
        if text == self._seen:
            return False
        self._seen = text
        try:
            if text.startswith("\0"):
                raise ValueError(text[1:])
            backends = parse_endpoints(text)
            self.apply(backends)  # ValueError too: e.g. a host name where ORIGINAL_DST needs an IP
        except ValueError as error:
            self.errors += 1
            log.error("endpoints file rejected: keeping the last good fleet",
                      extra={"path": str(self.path), "error": str(error)})
            return False
        return True

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="endpoints-file")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check()
            except Exception:  # never let the watcher die: the fleet would silently freeze
                log.exception("endpoints file check failed")
