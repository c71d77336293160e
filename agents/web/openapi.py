"""The OpenAPI 3.1 document of the REST API (`agents.web.api`), served at ``/openapi.json``."""

from __future__ import annotations


def _query(name: str, description: str, required: bool = True, **schema: object) -> dict:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": "string", **schema},
    }


_ERROR = {
    "description": "error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_ERRORS = {str(code): _ERROR for code in (400, 401, 403, 404)}

OPENAPI: dict = {
    "openapi": "3.1.0",
    "info": {
        "title": "nextbest REST API",
        "version": "1",
        "description": "Recommendations, promotions, model training and event ingestion. "
        "Bearer tokens: a merchant token sees its own merchant, the admin token every merchant.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
            },
            "Offer": {
                "type": "object",
                "properties": {
                    "offer_type": {"enum": ["free_shipping", "percent_off", "threshold_nudge"]},
                    "promotion_id": {"type": "string"},
                    "message": {"type": "string"},
                    "percent_off": {"type": ["number", "null"]},
                    "amount_to_next_tier": {"type": ["number", "null"]},
                    "recommendations": {"type": "array", "items": {"type": "string"}},
                },
            },
            "Job": {
                "type": "object",
                "required": ["job", "merchant", "status", "created_at"],
                "properties": {
                    "job": {"type": "string"},
                    "merchant": {"type": "string"},
                    "status": {"enum": ["queued", "running", "succeeded", "failed"]},
                    "created_at": {"type": "string"},
                    "started_at": {"type": ["string", "null"]},
                    "finished_at": {"type": ["string", "null"]},
                    "artifact": {"type": ["string", "null"]},
                    "metrics": {"type": ["object", "null"]},
                    "error": {"type": ["string", "null"]},
                },
            },
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/product-recommendations": {
            "get": {
                "summary": "The customer's most likely next purchases (next-purchase model)",
                "parameters": [
                    _query("merchant", "merchant id"),
                    _query("customer", "customer id"),
                    _query("n", "how many (1-100, default 10)", False, pattern="^[0-9]+$"),
                ],
                "responses": {
                    "200": {
                        "description": "ranked products",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "model_version": {"type": "string"},
                                        "cold_start": {"type": "boolean"},
                                        "recommendations": {
                                            "type": "array",
                                            "items": {
                                                "type": "object",
                                                "properties": {
                                                    "product_id": {"type": "string"},
                                                    "score": {"type": "number"},
                                                },
                                            },
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "503": {**_ERROR, "description": "model not configured"},
                    **_ERRORS,
                },
            }
        },
        "/best-promotion": {
            "get": {
                "summary": "What the promotion policy would offer now for the current cart",
                "parameters": [
                    _query("merchant", "merchant id"),
                    _query("customer", "customer id (or session)", False),
                    _query("session", "anonymous session id (or customer)", False),
                    _query("at", "ISO 8601 time with offset (default: now)", False),
                ],
                "responses": {
                    "200": {
                        "description": "the offer (or null) and its reason",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "offer": {
                                            "oneOf": [
                                                {"$ref": "#/components/schemas/Offer"},
                                                {"type": "null"},
                                            ]
                                        },
                                        "reason": {"type": "string"},
                                        "policy": {"type": "string"},
                                    },
                                }
                            }
                        },
                    },
                    **_ERRORS,
                },
            }
        },
        "/predictors": {
            "post": {
                "summary": "Train or retrain the merchant's next-purchase model (background job)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["merchant"],
                                "properties": {"merchant": {"type": "string"}},
                            }
                        }
                    },
                },
                "responses": {
                    "202": {
                        "description": "job started",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Job"}}
                        },
                    },
                    "409": {**_ERROR, "description": "a job for the merchant is already running"},
                    "413": {**_ERROR, "description": "body too large"},
                    "422": {**_ERROR, "description": "no training data configured"},
                    **_ERRORS,
                },
            }
        },
        "/predictors/{job}": {
            "get": {
                "summary": "Status and metrics of a training job",
                "parameters": [
                    {"name": "job", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {
                        "description": "the job",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Job"}}
                        },
                    },
                    **_ERRORS,
                },
            }
        },
        "/events": {
            "post": {
                "summary": "Ingest a batch of input events (the Kafka topics' contracts)",
                "description": "Each event is validated like the Kafka path (schemas/json/*.v1.json"
                ") and produced to its topic; errors are reported per event.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    {
                                        "type": "object",
                                        "required": ["events"],
                                        "properties": {
                                            "events": {"type": "array", "items": {"type": "object"}}
                                        },
                                    },
                                    {"type": "array", "items": {"type": "object"}},
                                ]
                            }
                        }
                    },
                },
                "responses": {
                    "202": {
                        "description": "accepted events produced; per-event errors",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "accepted": {"type": "integer"},
                                        "rejected": {"type": "integer"},
                                        "errors": {
                                            "type": "array",
                                            "items": {
                                                "type": "object",
                                                "properties": {
                                                    "index": {"type": "integer"},
                                                    "reason": {"type": "string"},
                                                    "error": {"type": "string"},
                                                },
                                            },
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "413": {**_ERROR, "description": "body or batch too large"},
                    **_ERRORS,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1"}},
            }
        },
    },
}
