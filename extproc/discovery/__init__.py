"""Dynamic fleet membership: sources of the instance list and the one place that applies a change.

- :class:`EndpointsFile` watches a YAML/JSON file (the Kubernetes ConfigMap pattern: a mounted ConfigMap is
  swapped atomically by the kubelet); a file that does not parse keeps the last good fleet and logs one error.
- :class:`KubernetesPods` lists and watches the pods (or EndpointSlices) a label selector picks (as
  production-stack's service discovery and an InferencePool's selector do) through the API server's HTTP API.
- :class:`Fleet` applies a new instance list to the datastore, the poller and the director.

Envoy learns nothing: the router names each request's instance as ``ip:port`` (``--destination-mode
endpoint``) and an ``ORIGINAL_DST`` cluster connects there (docs/kubernetes.md says why this mode).
"""

from extproc.discovery._file import EndpointsFile, parse_endpoints
from extproc.discovery._fleet import Fleet
from extproc.discovery._kubernetes import KubernetesPods, KubernetesSource, backends_from_pods, backends_from_slices

__all__ = ["EndpointsFile", "Fleet", "KubernetesPods", "KubernetesSource", "backends_from_pods", "backends_from_slices",
           "parse_endpoints"]
