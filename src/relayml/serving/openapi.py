"""The OpenAPI 3 document of a scoring server: the routes, and the raw columns a model takes.

Served at ``GET /openapi.json`` (:mod:`relayml.serving.app`). It describes the three accepted
content types of ``POST /invocations`` (JSON in MLflow's four formats, CSV, Parquet), the
error body and the bearer scheme. Pure data: no I/O.
"""

from __future__ import annotations

from typing import Any

from relayml import __version__
from relayml.bundle import Bundle

__all__ = ["openapi"]

_JSON_TYPES = {
    "double": {"type": "number"},
    "float": {"type": "number"},
    "long": {"type": "integer"},
    "integer": {"type": "integer"},
    "boolean": {"type": "boolean"},
    "string": {"type": "string"},
    "datetime": {"type": "string", "format": "date-time"},
    "binary": {"type": "string", "format": "byte"},
}


def openapi(bundle: Bundle) -> dict[str, Any]:
    """The OpenAPI 3 document of a server scoring ``bundle``.

    Args:
        bundle: the served bundle; its input schema becomes the ``Record`` schema.

    Returns:
        The document, ready for JSON.

    Example:
        >>> from relayml.bundle import load_bundle
        >>> doc = openapi(load_bundle(relay.get("training/logreg@latest").model_uri))
        >>> sorted(doc["paths"]["/invocations"]["post"]["requestBody"]["content"])
        ['application/json', 'application/vnd.apache.parquet', 'text/csv']
        >>> "Amount" in doc["components"]["schemas"]["Record"]["required"]
        True
    """
    properties = {n: _JSON_TYPES.get(t, {}) for n, t in bundle.input_schema}
    record = {
        "type": "object",
        "properties": properties,
        "required": bundle.columns,
        "additionalProperties": True,
    }
    if bundle.output_columns:
        prediction: dict[str, Any] = {
            "type": "object",
            "properties": {"label": {}, "score": {"type": "number"}},
        }
    else:
        prediction = {}
    error = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": "string", "nullable": True},
                },
            }
        },
    }
    body = {
        "oneOf": [
            {
                "type": "object",
                "properties": {
                    "dataframe_records": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/Record"},
                    }
                },
                "required": ["dataframe_records"],
            },
            {
                "type": "object",
                "properties": {
                    "dataframe_split": {
                        "type": "object",
                        "properties": {
                            "columns": {"type": "array", "items": {"type": "string"}},
                            "data": {"type": "array", "items": {"type": "array"}},
                        },
                        "required": ["columns", "data"],
                    }
                },
                "required": ["dataframe_split"],
            },
            {
                "type": "object",
                "properties": {
                    "instances": {"type": "array", "items": {"$ref": "#/components/schemas/Record"}}
                },
                "required": ["instances"],
            },
            {
                "type": "object",
                "properties": {"inputs": {}},
                "required": ["inputs"],
            },
        ]
    }
    answers = {"$ref": "#/components/responses/Error"}
    return {
        "openapi": "3.0.3",
        "info": {"title": f"relayml scoring: {bundle.uri}", "version": __version__},
        "paths": {
            "/invocations": {
                "post": {
                    "summary": "Score raw records",
                    "description": (
                        "A JSON body (one of dataframe_split, dataframe_records, instances, "
                        "inputs), a CSV body (a header line, then rows) or a Parquet file. "
                        "413 beyond the server's --max-body bytes, --max-rows records, "
                        "its column limit or 8 x --max-body decoded."
                    ),
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": body},
                            "text/csv": {
                                "schema": {"type": "string"},
                                "example": ",".join(bundle.columns) + "\n",
                            },
                            "application/vnd.apache.parquet": {
                                "schema": {"type": "string", "format": "binary"}
                            },
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "predictions, one per record",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "predictions": {"type": "array", "items": prediction}
                                        },
                                    }
                                }
                            },
                        },
                        "400": answers,
                        "401": answers,
                        "405": answers,
                        "413": answers,
                        "415": answers,
                    },
                }
            },
            "/ping": {"get": {"responses": {"200": {"description": "alive"}}}},
            "/health": {"get": {"responses": {"200": {"description": "alive"}}}},
            "/version": {"get": {"responses": {"200": {"description": "versions, provenance"}}}},
        },
        "components": {
            "schemas": {"Record": record, "Error": error},
            "responses": {
                "Error": {
                    "description": "bad request",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
