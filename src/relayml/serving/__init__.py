"""Serving a bundle: the REST scoring server and batch scoring of files.

One module per job, imported downward only:

- :mod:`~relayml.serving.limits`: what one request may cost (rows, columns, decoded bytes);
- :mod:`~relayml.serving.protocol`: MLflow's scoring protocol (JSON, CSV, Parquet in,
  ``{"predictions": ...}`` out), within the limits;
- :mod:`~relayml.serving.openapi`: the OpenAPI document of a server;
- :mod:`~relayml.serving.app`: the ASGI app (routes, bearer token, bodies);
- :mod:`~relayml.serving.http`: running it (uvicorn, workers, timeouts on the wire);
- :mod:`~relayml.serving.batch`: scoring a file (``relay predict``, the executor);
- :mod:`~relayml.serving.api`: the public :func:`~relayml.serving.api.serve` and
  :func:`~relayml.serving.api.predict` (``relay.serve``, ``relay.predict``).

Nothing here writes to MLflow: it only reads models. This package's ``__init__`` imports
nothing, so that the executor can use batch scoring without loading the server.
"""
