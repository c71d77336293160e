"""The OpenAPI 3.1 document of the REST API (`agents.web.api`), served at ``/openapi.json``.

Every route, its parameters with their bounds, its body and every status it answers with
(tests/test_api_fuzz.py fuzzes the live API from this document and checks the answers against it).
"""

from __future__ import annotations

from typing import get_args

from agents.web.params import AT_RANGE, MAX_RECOMMENDATIONS
from schemas.events import INPUT_EVENTS, AddOnSource
from schemas.json_schema import build_schemas
from schemas.spec import ID_MAX_LENGTH, record_spec

_ID = {"type": "string", "minLength": 1, "maxLength": ID_MAX_LENGTH}
_NULLABLE_STRING = {"type": ["string", "null"]}


def _query(name: str, description: str, schema: dict, required: bool = True) -> dict:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str, retry_after: bool = False) -> dict:
    answer = _json({"$ref": "#/components/schemas/Error"}, description)
    if retry_after:
        answer["headers"] = {
            "Retry-After": {
                "description": "seconds to wait before retrying",
                "required": True,
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            }
        }
    return answer


_UNAUTHORIZED = {
    **_error("no bearer token, or an unknown one"),
    "headers": {"WWW-Authenticate": {"required": True, "schema": {"const": "Bearer"}}},
}
_FORBIDDEN = _error("the token lacks this route's scope, or belongs to another merchant")
_TOO_MANY = _error("the token's rate limit (NEXTBEST_API_RATE, NEXTBEST_API_BURST)", True)
_BAD = _error("a parameter or body is missing or out of bounds (the message names it)")
_UNKNOWN_MERCHANT = _error("unknown merchant")
_NOT_ASSIGNED = _error(
    "the worker does not know the partition assignment yet, or the owner is unreachable", True
)


def _errors(*statuses: int, **others: dict) -> dict:
    common = {
        400: _BAD,
        401: _UNAUTHORIZED,
        403: _FORBIDDEN,
        404: _UNKNOWN_MERCHANT,
        429: _TOO_MANY,
        503: _NOT_ASSIGNED,
    }
    return {**{str(status): common[status] for status in statuses}, **others}


_MERCHANT = _query("merchant", "merchant id", _ID)
_COUNT = _query(
    "n",
    "how many",
    {"type": "integer", "minimum": 1, "maximum": MAX_RECOMMENDATIONS, "default": 10},
    required=False,
)


def _input_event_schemas() -> dict[str, dict]:
    """The input topics' JSON Schemas (schemas/json/*.v1.json) by title, e.g. ``CartEvent``."""
    titles = {record_spec(record).name for record in INPUT_EVENTS.values()}
    return {
        document["title"]: {k: v for k, v in document.items() if k not in ("$schema", "$id")}
        for document in build_schemas().values()
        if document["title"] in titles
    }


_EVENTS = _input_event_schemas()

OPENAPI: dict = {
    "openapi": "3.1.0",
    "info": {
        "title": "nextbest REST API",
        "version": "1",
        "description": "Recommendations, promotions, customer state, model training and event "
        "ingestion. Bearer tokens have scopes: `ingest` (POST /events), `read` (recommendations, "
        "promotions, customer state), `train` (predictors); a merchant token sees its own "
        "merchant, the admin token every merchant. Each token is rate limited (429).",
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
                "required": ["offer_type", "promotion_id", "message", "recommendations"],
                "properties": {
                    "offer_type": {"enum": ["free_shipping", "percent_off", "threshold_nudge"]},
                    "promotion_id": {"type": "string"},
                    "message": {"type": "string"},
                    "percent_off": {"type": ["number", "null"]},
                    "amount_to_next_tier": {"type": ["number", "null"]},
                    "recommendations": {"type": "array", "items": {"type": "string"}},
                    "recommendation_sources": {
                        "description": "where each recommendation comes from, in order",
                        "type": "array",
                        "items": {"enum": list(get_args(AddOnSource))},
                    },
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
                    "started_at": _NULLABLE_STRING,
                    "finished_at": _NULLABLE_STRING,
                    "artifact": _NULLABLE_STRING,
                    "metrics": {"type": ["object", "null"]},
                    "error": _NULLABLE_STRING,
                },
            },
            **_EVENTS,
            "Event": {
                "description": "one input event: the contract of its event_type "
                "(schemas/json/*.v1.json); any other object is answered in `errors`",
                "anyOf": [
                    *({"$ref": f"#/components/schemas/{title}"} for title in _EVENTS),
                    {"type": "object"},
                ],
            },
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/product-recommendations": {
            "get": {
                "summary": "The customer's most likely next purchases (next-purchase model)",
                "description": "Scope `read`.",
                "parameters": [
                    _MERCHANT,
                    _query("customer", "customer id", _ID),
                    _COUNT,
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": [
                                "merchant",
                                "customer",
                                "model_version",
                                "cold_start",
                                "known_customer",
                                "recommendations",
                            ],
                            "properties": {
                                "merchant": {"type": "string"},
                                "customer": {"type": "string"},
                                "model_version": {"type": "string"},
                                "cold_start": {"type": "boolean"},
                                "known_customer": {"type": "boolean"},
                                "recommendations": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["product_id", "score"],
                                        "properties": {
                                            "product_id": {"type": "string"},
                                            "score": {"type": "number"},
                                        },
                                    },
                                },
                            },
                        },
                        "ranked products",
                    ),
                    **_errors(
                        400,
                        401,
                        403,
                        404,
                        429,
                        **{
                            "503": _error(
                                "no model loaded for the merchant (model not configured), or "
                                "the partition assignment is not known yet (with Retry-After)"
                            )
                        },
                    ),
                },
            }
        },
        "/similar-items": {
            "get": {
                "summary": "Products most often bought together with a product (item-to-item)",
                "description": "Scope `read`. Not customer-keyed: the worker asked answers. A "
                "product the table does not know (new since training), or one with no neighbour "
                "seen in enough orders, gets the most popular products (`cold_start`); a short "
                "neighbour list is filled with popular ones (`source`).",
                "parameters": [
                    _MERCHANT,
                    _query("product", "product id (stock code)", _ID),
                    _COUNT,
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": [
                                "merchant",
                                "product",
                                "model_version",
                                "cold_start",
                                "known_product",
                                "similar_items",
                            ],
                            "properties": {
                                "merchant": {"type": "string"},
                                "product": {"type": "string"},
                                "model_version": {"type": "string"},
                                "cold_start": {"type": "boolean"},
                                "known_product": {"type": "boolean"},
                                "similar_items": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": [
                                            "product_id",
                                            "score",
                                            "orders_together",
                                            "source",
                                        ],
                                        "properties": {
                                            "product_id": {"type": "string"},
                                            "score": {"type": "number", "minimum": 0},
                                            "orders_together": {"type": "integer", "minimum": 0},
                                            "source": {"enum": ["bought_together", "popular"]},
                                        },
                                    },
                                },
                            },
                        },
                        "neighbours, best first, then popular products up to n",
                    ),
                    **_errors(
                        400,
                        401,
                        403,
                        404,
                        429,
                        **{
                            "503": _error(
                                "no model loaded for the merchant (model not configured), or "
                                "its version has no bought-together table (retrain)"
                            )
                        },
                    ),
                },
            }
        },
        "/next-best-actions": {
            "get": {
                "summary": "The customer's engagement actions ranked (loyalty, app, newsletter...)",
                "description": "Scope `read`. Ranked by P(take | customer state) x value, or by "
                "P(take) alone (the merchant's `engagement.ranking`), with Thompson sampling: "
                "`propensity` is the probability the first action had of being ranked first. "
                "Only the actions the customer is eligible for; an unknown customer is ranked "
                "on the priors. `ranking_id` names this answer: the shop's `action_shown` of "
                "the first action carries it and `propensity`, so its take is learned and "
                "evaluated off policy like a cart decision's (docs/merchants.md).",
                "parameters": [_MERCHANT, _query("customer", "customer id", _ID), _COUNT],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": [
                                "merchant",
                                "customer",
                                "ranking_id",
                                "ranking",
                                "model_version",
                                "propensity",
                                "known_customer",
                                "actions",
                            ],
                            "properties": {
                                "merchant": {"type": "string"},
                                "customer": {"type": "string"},
                                "ranking_id": {"type": "string", "maxLength": 256},
                                "ranking": {"enum": ["expected_value", "propensity"]},
                                "model_version": {"type": "string"},
                                "propensity": {
                                    "type": "number",
                                    "exclusiveMinimum": 0,
                                    "maximum": 1,
                                },
                                "known_customer": {"type": "boolean"},
                                "actions": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": [
                                            "action_id",
                                            "kind",
                                            "title",
                                            "value",
                                            "p_take",
                                            "expected_value",
                                        ],
                                        "properties": {
                                            "action_id": {"type": "string"},
                                            "kind": {
                                                "enum": [
                                                    "loyalty",
                                                    "app",
                                                    "newsletter",
                                                    "category",
                                                    "custom",
                                                ]
                                            },
                                            "title": {"type": "string"},
                                            "value": {"type": "number"},
                                            "p_take": {"type": "number"},
                                            "expected_value": {"type": "number"},
                                        },
                                    },
                                },
                            },
                        },
                        "the eligible engagement actions, best first",
                    ),
                    **_errors(400, 401, 403, 404, 429, 503),
                },
            }
        },
        "/best-promotion": {
            "get": {
                "summary": "What the promotion policy would offer now for the current cart",
                "description": "Scope `read`. Give exactly one of customer and session.",
                "parameters": [
                    _MERCHANT,
                    _query("customer", "customer id (or session)", _ID, required=False),
                    _query("session", "anonymous session id (or customer)", _ID, required=False),
                    _query(
                        "at",
                        f"the moment to ask about, ISO 8601 with a UTC offset, from {AT_RANGE[0]}"
                        f" to before {AT_RANGE[1]} (default: now)",
                        {"type": "string", "format": "date-time"},
                        required=False,
                    ),
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["merchant", "policy", "at", "offer", "reason"],
                            "properties": {
                                "merchant": {"type": "string"},
                                "customer": _NULLABLE_STRING,
                                "session": _NULLABLE_STRING,
                                "policy": {"type": "string"},
                                "at": {"type": "string"},
                                "offer": {
                                    "oneOf": [
                                        {"$ref": "#/components/schemas/Offer"},
                                        {"type": "null"},
                                    ]
                                },
                                "reason": {"type": "string"},
                                "cart_value": {"type": "number"},
                                "currency": {"type": "string"},
                                "churn_risk": {
                                    "type": "object",
                                    "description": "the customer's churn risk at ``at``"
                                    " (streams.state.churn); score null without orders",
                                    "properties": {
                                        "score": {"type": ["number", "null"]},
                                        "band": {"type": "string"},
                                    },
                                },
                            },
                        },
                        "the offer (or null) and its reason (ending with the churn risk in"
                        " words when the customer has ordered)",
                    ),
                    **_errors(400, 401, 403, 404, 429, 503),
                },
            }
        },
        "/customers/{key}/": {
            "get": {
                "summary": "One customer's state record (operators, debugging)",
                "description": "Scope `read`; the record holds contact addresses.",
                "parameters": [
                    {
                        "name": "key",
                        "in": "path",
                        "required": True,
                        "description": "`<merchant>:c:<customer_id>` or `<merchant>:s:<session>`",
                        "schema": {"type": "string", "minLength": 1},
                    }
                ],
                "responses": {
                    "200": _json({"type": "object"}, "the state record"),
                    **_errors(
                        400,
                        401,
                        403,
                        429,
                        503,
                        **{"404": _error("unknown merchant, or no state for this key")},
                    ),
                },
            }
        },
        "/predictors": {
            "post": {
                "summary": "Train or retrain the merchant's next-purchase model (background job)",
                "description": "Scope `train`.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["merchant"],
                                "properties": {"merchant": _ID},
                            }
                        }
                    },
                },
                "responses": {
                    "202": {
                        **_json({"$ref": "#/components/schemas/Job"}, "job started"),
                        "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
                    },
                    **_errors(
                        400,
                        401,
                        403,
                        404,
                        429,
                        503,
                        **{
                            "409": _error("a job for the merchant is already running"),
                            "413": _error("body over NEXTBEST_API_MAX_BODY_BYTES"),
                            "422": _error("no training data configured for the merchant"),
                        },
                    ),
                },
            }
        },
        "/predictors/{job}": {
            "get": {
                "summary": "Status and metrics of a training job",
                "description": "Scope `train`.",
                "parameters": [
                    {
                        "name": "job",
                        "in": "path",
                        "required": True,
                        "description": "`<merchant>.<12 hex digits>`, as POST /predictors gave",
                        "schema": {"type": "string", "minLength": 1},
                    }
                ],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Job"}, "the job"),
                    **_errors(
                        401, 403, 429, 503, **{"404": _error("unknown job (or its merchant)")}
                    ),
                },
            }
        },
        "/events": {
            "post": {
                "summary": "Ingest a batch of input events (the Kafka topics' contracts)",
                "description": "Scope `ingest`. Each event is validated like the Kafka path "
                "(schemas/json/*.v1.json) and produced to its topic; errors are reported per "
                "event. An event for a merchant other than the token's makes the whole request "
                "a 403 (nothing is produced).",
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
                                            "events": {
                                                "type": "array",
                                                "items": {"$ref": "#/components/schemas/Event"},
                                            }
                                        },
                                    },
                                    {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Event"},
                                    },
                                ]
                            }
                        }
                    },
                },
                "responses": {
                    "202": _json(
                        {
                            "type": "object",
                            "required": ["accepted", "rejected", "errors"],
                            "properties": {
                                "accepted": {"type": "integer", "minimum": 0},
                                "rejected": {"type": "integer", "minimum": 0},
                                "errors": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["index", "reason", "error"],
                                        "properties": {
                                            "index": {"type": "integer", "minimum": 0},
                                            "reason": {"type": "string"},
                                            "error": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                        "the valid events were produced; the others are listed with reasons",
                    ),
                    **_errors(
                        400,
                        401,
                        429,
                        **{
                            "403": _error(
                                "the token lacks the ingest scope, or an event names another "
                                "merchant (`indices` lists them)"
                            ),
                            "413": _error(
                                "body over NEXTBEST_API_MAX_BODY_BYTES or more events than "
                                "NEXTBEST_API_MAX_EVENTS"
                            ),
                        },
                    ),
                },
            }
        },
        "/ready": {
            "get": {
                "summary": "Whether this worker can answer API calls now (readiness probe)",
                "description": "No token. Ready: no rebalance in progress, the tables recovered, "
                "an owner known for every partition (this worker's own under its advertised "
                "URL, NEXTBEST_WEB_ADVERTISED_URL).",
                "security": [],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["ready", "partitions"],
                            "properties": {
                                "ready": {"const": True},
                                "partitions": {"type": "integer", "minimum": 0},
                                "rebalancing": {"const": True},
                            },
                        },
                        "ready; partitions: how many partitions of the customers table it owns; "
                        "rebalancing: ready before and a rebalance runs (keyed calls answer 503 "
                        "until it ends)",
                    ),
                    "503": _json(
                        {
                            "type": "object",
                            "required": ["ready", "partitions", "error"],
                            "properties": {
                                "ready": {"const": False},
                                "partitions": {"type": "integer", "minimum": 0},
                                "error": {"type": "string"},
                            },
                        },
                        "not ready (rebalancing, recovering, assignment not known); the reason",
                    ),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
            }
        },
    },
}
