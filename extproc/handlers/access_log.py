"""Envoy's gRPC access log service (``envoy.service.accesslog.v3.AccessLogService``), in access-log mode.

Envoy's ``http_grpc`` access logger (rendered by ``extproc/envoy_config/_listeners.py``) reports every routed
request the observer filter did not run on, in batches over one long-lived stream per Envoy worker: its route
id, the cluster the router picked, the workflow headers, the status, the cluster that answered and the time to
the response's last byte. This layer turns each entry into plain facts for the director (``Director.logged``),
which completes the response as the observer would have (passive health, the deadline learner, the usage
estimate, the A2A report). An entry without a route id is not ours: counted, skipped.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry, Counter

from extproc.config import AGENT_ID_HEADER, ROUTE_ID_HEADER, SERVED_BY_HEADER, WORKFLOW_ID_HEADER
from extproc.requestcontrol.director import Director
from extproc.requestcontrol.types import LoggedResponse

log = logging.getLogger("extproc")


def logged_response(entry: accesslog_pb2.HTTPAccessLogEntry, cluster_header: str) -> LoggedResponse | None:
    """The facts of one entry; None when it carries no route id (not a request this router routed)."""
    request = entry.request
    headers = request.request_headers
    route_id = headers.get(ROUTE_ID_HEADER)
    if not route_id:
        return None
    response = entry.response
    common = entry.common_properties
    last_byte = common.time_to_last_downstream_tx_byte if common.HasField("time_to_last_downstream_tx_byte") \
        else common.duration
    return LoggedResponse(
        route_id=route_id,
        instance=headers.get(cluster_header, ""),
        workflow_id=headers.get(WORKFLOW_ID_HEADER) or None,
        agent_id=headers.get(AGENT_ID_HEADER) or None,
        request_id=request.request_id,
        path=request.path.partition("?")[0],
        status=response.response_code.value,
        served_by=response.response_headers.get(SERVED_BY_HEADER) or None,
        wall_s=last_byte.seconds + last_byte.nanos * 1e-9,
    )


class AccessLogServicer(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]  # untyped generated base
    def __init__(self, director: Director, cluster_header: str, registry: CollectorRegistry) -> None:
        self.director = director
        self.cluster_header = cluster_header
        entries = Counter("extproc_access_log_entries", "Access log entries Envoy reported (access-log mode), by "
                          "outcome: completed a response, skipped (no route id) or failed (logged)", ["outcome"],
                          registry=registry)
        self._completed, self._skipped, self._failed = (entries.labels(outcome)
                                                        for outcome in ("completed", "skipped", "failed"))
        self.batches = Counter("extproc_access_log_batches", "Access log messages (batches of entries) received",
                               registry=registry)

    async def StreamAccessLogs(
        self, request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage],
        context: grpc.aio.ServicerContext[als_pb2.StreamAccessLogsMessage, als_pb2.StreamAccessLogsResponse],
    ) -> als_pb2.StreamAccessLogsResponse:
        director, cluster_header = self.director, self.cluster_header
        try:
            async for message in request_iterator:
                self.batches.inc()
                for entry in message.http_logs.log_entry:
                    found = logged_response(entry, cluster_header)
                    if found is None:
                        self._skipped.inc()
                        continue
                    try:
                        director.logged(found)
                    except Exception:  # one bad entry must not cost the rest of the batch
                        self._failed.inc()
                        log.exception("access log entry failed", extra={"route_id": found.route_id})
                        continue
                    self._completed.inc()
        except DecodeError as error:  # grpc.aio decodes lazily, inside our iteration of the stream
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a valid StreamAccessLogsMessage: {error}")
        return als_pb2.StreamAccessLogsResponse()
