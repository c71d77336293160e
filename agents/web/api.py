"""The shop-facing REST API on the worker's web server (Faust views); see README "REST API".

- ``GET /product-recommendations?merchant=&customer=&n=`` the next-purchase model's top n for
  the customer's order history (503 when no model is loaded);
- ``GET /similar-items?merchant=&product=&n=`` the products most often bought together with the
  product (the item-to-item table trained with the model), the most popular ones for a product
  the table does not know (``cold_start``); not customer-keyed, so the worker that gets it
  answers from the models it loaded (every worker loads every merchant's), never forwarded;
- ``GET /best-promotion?merchant=&customer=`` (or ``&session=``) what the policy would offer
  now for the current cart, with its reason and the customer's churn risk (``&at=`` an ISO time to
  ask about another moment);
- ``GET /next-best-actions?merchant=&customer=&n=`` the merchant's engagement actions the
  customer is eligible for, ranked by P(take) x value (or P(take) alone), with the ranking's
  id and the first's propensity, for the shop's ``action_shown`` of it (`agents.engagement`,
  ``streams.engagement``);
- ``POST /predictors {"merchant"}`` starts a background ``nextbest train`` job for the
  merchant (`agents.web.training`); ``GET /predictors/{job}`` its status and metrics;
- ``POST /events`` a batch of input events, validated exactly like the Kafka path
  (`schemas.validation.parse_event`), produced to the input topics keyed by customer (Faust's
  producer partitions with murmur2, like Kafka's Java clients); 202 with per-event errors;
- ``GET /customers/{key}/`` one customer's state record (``<merchant>:c:<customer_id>`` or
  ``:s:<session>``), for operators and tests; it holds contact addresses, hence scope ``read``;
- ``GET /openapi.json`` the OpenAPI document (no token needed);
- ``GET /ready`` 200 when this worker can answer (assignment known, tables recovered), 503 with
  the reason otherwise: Kubernetes' readiness probe (no token, `agents.web.readiness`).

Every other endpoint needs ``Authorization: Bearer <token>`` with its scope (`agents.web.auth`):
``ingest`` for ``POST /events``, ``read`` for recommendations, promotions and customer state,
``train`` for the predictors; a merchant token sees only its own
merchant, the admin token every merchant; each token has a rate limit (429). Customer-keyed
requests (and the jobs of a merchant) are forwarded to the worker that owns the key's partition,
body included. No input answers 500: parameters, bodies and events are checked and answered 4xx
(503 while the partition assignment is not known). Logs name merchants, endpoints and counts
only: never request bodies, addresses or tokens.

Metrics: ``nextbest_api_requests_total{route, method, status}`` and the
``nextbest_api_request_duration_seconds`` histogram, labelled by the route template
(``/predictors/{job}``), never by the raw path, so no customer or job id becomes a label.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, Protocol

import aiohttp
import faust
import orjson
from faust.web import Request, Response, View
from yarl import URL

from agents.engagement import Engagement
from agents.runtime import metrics
from agents.runtime.app import NextbestApp
from agents.runtime.topics import key_partition
from agents.web.auth import Auth
from agents.web.errors import ApiError, retry_later
from agents.web.openapi import OPENAPI
from agents.web.params import check_id, count_param, id_param, time_param
from agents.web.readiness import worker_readiness
from agents.web.training import JOB_SUFFIX, Trainer
from schemas.events import INPUT_EVENTS
from schemas.keys import iso, state_key
from schemas.validation import ALL_EVENT_TYPES, InvalidEvent, parse_event
from streams.decisions import DecisionContext, Offer, Policy
from streams.engagement import serving
from streams.state import churn

log = logging.getLogger(__name__)
FORWARDED = "X-Nextbest-Forwarded"
SERVED_BY = "X-Nextbest-Worker"  # response header: the worker that answered
FORWARD_TIMEOUT = aiohttp.ClientTimeout(total=30)
PASSED_HEADERS = (SERVED_BY, "Location", "WWW-Authenticate", "Retry-After")  # kept when forwarded
#: A validator error other than InvalidEvent (a bug in it): the event is rejected all the same.
VALIDATOR_ERRORS = (TypeError, KeyError, ValueError, AttributeError, ArithmeticError)


class ServingModel(Protocol):
    """A loaded next-purchase model (``models.next_purchase.serving.LoadedModel``)."""

    version: str
    recommender: Any  # has score_batch(histories, k) -> [Scored(items, scores, cold_start)]
    similar: Any  # a SimilarItems (similar(product, n) -> SimilarResult), or None


ModelLookup = Callable[[str], ServingModel | None]  # merchant id -> its model, if loaded


# -- the API --------------------------------------------------------------------------------


def forwarded_url(request_url: URL, owner: URL) -> URL:
    """``request_url`` (path and query kept) sent to ``owner``, the owning worker's advertised
    URL: its scheme, host and port (an advertised ``https://`` URL is called over TLS)."""
    return request_url.with_scheme(owner.scheme).with_host(owner.host).with_port(owner.port)


class Api:
    def __init__(
        self,
        nb: NextbestApp,
        policy: Policy,
        models: ModelLookup | None = None,
        engagement: Engagement | None = None,
    ) -> None:
        self.nb = nb
        self.policy = policy
        self.models = models or (lambda merchant: None)
        self.engagement = engagement or Engagement()
        settings = nb.settings
        self.auth = Auth(settings)
        self.trainer = Trainer(nb)
        self.settled = False  # /ready answered ready once: it stays so through rebalances
        self.topics = {
            kind: nb.app.topic(
                getattr(settings.topics, kind),
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
            )
            for kind in INPUT_EVENTS
        }

    # -- plumbing ------------------------------------------------------------------------

    async def handle(
        self,
        view: View,
        request: Request,
        route: str,
        handler: Callable[[], Awaitable[Response]],
    ) -> Response:
        """Run one endpoint: API errors as JSON answers, the worker header, the metrics."""
        started = time.perf_counter()
        try:
            response = await handler()
        except ApiError as exc:
            response = view.json(
                {"error": exc.message, **exc.extra}, status=exc.status, headers=exc.headers
            )
        except Exception:
            log.exception("API %s %s failed", request.method, request.path)
            response = view.json({"error": "internal error"}, status=500)
        response.headers.setdefault(SERVED_BY, str(self.nb.app.conf.canonical_url))
        metrics.API_REQUESTS.labels(route, request.method, str(response.status)).inc()
        metrics.API_LATENCY.labels(route, request.method).observe(time.perf_counter() - started)
        return response

    def merchant(self, request: Request, name: str | None, scope: str) -> str:
        """``name`` if the request's token has ``scope`` on it and it is configured."""
        if not name:
            raise ApiError(400, "merchant is required")
        check_id("merchant", name)
        self.auth.require(request, name, scope)
        if name not in self.nb.registry:
            raise ApiError(404, f"unknown merchant {name!r}")
        return name

    def owner(self, key: bytes) -> URL | None:
        """The web URL of the worker that owns ``key``'s partition of the customers table.

        The partition is computed like every producer here (murmur2, Java-compatible), so the
        answer does not depend on the producer having fetched the changelog's metadata yet.
        """
        partition = key_partition(key, self.nb.settings.partitions)
        topic = self.nb.customers.changelog_topic.get_topic_name()
        for url, topics in self.nb.app.router.table_metadata(self.nb.customers.name).items():
            if partition in topics.get(topic, ()):
                return URL(url)
        return None

    async def forward(
        self, view: View, request: Request, key: bytes, body: bytes | None = None
    ) -> Response | None:
        """The owner's response when another worker owns ``key``; None to serve it here."""
        if request.headers.get(FORWARDED):
            return None
        app = self.nb.app
        dest = self.owner(key)
        if dest is None:
            raise retry_later(503, "partition assignment not known yet; retry shortly")
        here = URL(str(app.conf.canonical_url))
        if (dest.host, dest.port) == (here.host, here.port):
            return None
        url = forwarded_url(request.url, dest)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        headers[FORWARDED] = "1"
        try:
            async with app.http_client.request(
                method=request.method, url=url, headers=headers, data=body, timeout=FORWARD_TIMEOUT
            ) as response:
                payload = await response.read()
                passed = {k: response.headers[k] for k in PASSED_HEADERS if k in response.headers}
                status, content_type = response.status, response.content_type
        except (aiohttp.ClientError, TimeoutError):
            raise retry_later(503, "the worker that owns this key is unreachable; retry") from None
        passed.setdefault(SERVED_BY, str(dest))
        return view.bytes(payload, content_type=content_type, status=status, headers=passed)

    async def body(self, request: Request) -> bytes:
        limit = self.nb.settings.api_max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, f"request body over {limit} bytes")
        chunks, size = [], 0
        while chunk := await request.content.read(65536):
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def state(self, key: str) -> dict | None:
        raw = self.nb.customers.get(key.encode())
        return orjson.loads(raw) if raw is not None else None

    # -- endpoints -----------------------------------------------------------------------

    async def recommendations(self, view: View, request: Request) -> Response:
        merchant = self.merchant(request, request.query.get("merchant"), "read")
        customer = id_param(request, "customer")
        n = count_param(request)
        key = state_key(merchant, customer, None)
        forwarded = await self.forward(view, request, key.encode())
        if forwarded is not None:
            return forwarded
        model = self.loaded_model(merchant)
        from models.next_purchase.serving import order_history  # torch is loaded when a model is

        state = self.state(key)
        rule = model.recommender.encoder.product_pattern
        history = order_history(state, product_pattern=rule) if state is not None else []
        [scored] = model.recommender.score_batch([history], k=n)
        return view.json(
            {
                "merchant": merchant,
                "customer": customer,
                "model_version": model.version,
                "cold_start": scored.cold_start,
                "known_customer": state is not None,
                "recommendations": [
                    {"product_id": item, "score": round(score, 6)}
                    for item, score in zip(scored.items, scored.scores, strict=True)
                ],
            }
        )

    def loaded_model(self, merchant: str) -> ServingModel:
        """The merchant's loaded next-purchase model; 503 when none is."""
        model = self.models(merchant)
        if model is None:
            raise ApiError(
                503,
                "model not configured: no next-purchase model is loaded for "
                "this merchant (set NEXTBEST_MODEL_PATH)",
                merchant=merchant,
            )
        return model

    async def similar_items(self, view: View, request: Request) -> Response:
        merchant = self.merchant(request, request.query.get("merchant"), "read")
        product = id_param(request, "product")
        n = count_param(request)
        model = self.loaded_model(merchant)
        if model.similar is None:
            raise ApiError(
                503,
                f"model {model.version} has no bought-together table (trained before it "
                "existed): retrain with nextbest train or POST /predictors",
                merchant=merchant,
            )
        found = model.similar.similar(product, n)
        return view.json(
            {
                "merchant": merchant,
                "product": product,
                "model_version": model.version,
                "cold_start": found.cold_start,
                "known_product": found.known_product,
                "similar_items": [
                    {
                        "product_id": item.product_id,
                        "score": item.score,
                        "orders_together": item.together,
                        "source": item.source,
                    }
                    for item in found.items
                ],
            }
        )

    async def best_promotion(self, view: View, request: Request) -> Response:
        merchant_id = self.merchant(request, request.query.get("merchant"), "read")
        customer = id_param(request, "customer", required=False)
        session = id_param(request, "session", required=False)
        if (customer is None) == (session is None):
            raise ApiError(400, "give exactly one of customer= or session=")
        at = time_param(request)
        key = state_key(merchant_id, customer, session)
        forwarded = await self.forward(view, request, key.encode())
        if forwarded is not None:
            return forwarded
        state = self.state(key)
        cart = state["cart"] if state is not None else None
        answer = {
            "merchant": merchant_id,
            "customer": customer,
            "session": session,
            "policy": self.policy.name,
            "at": iso(at),
        }
        risk = churn.risk(state, at) if state is not None else None
        answer["churn_risk"] = {"score": risk, "band": churn.band(risk)}
        risk_words = f"; {churn.explain(state, at)}" if risk is not None else ""
        if cart is None or not cart["lines"] or cart["value"] <= 0:
            return view.json({**answer, "offer": None, "reason": "the cart is empty" + risk_words})
        merchant = self.nb.registry.get(merchant_id)
        context = DecisionContext.of_stored_cart(merchant, key, state, at, "api")
        [offer] = self.policy.decide_batch([context])
        answer.update(cart_value=cart["value"], currency=context.currency)
        if offer is None:
            reason = "no promotion applies to this cart now" + risk_words
            return view.json({**answer, "offer": None, "reason": reason})
        reason = offer.reason + risk_words
        return view.json({**answer, "offer": offer_json(offer), "reason": reason})

    async def next_best_actions(self, view: View, request: Request) -> Response:
        merchant_id = self.merchant(request, request.query.get("merchant"), "read")
        customer = id_param(request, "customer")
        n = count_param(request)
        key = state_key(merchant_id, customer, None)
        forwarded = await self.forward(view, request, key.encode())
        if forwarded is not None:
            return forwarded
        merchant = self.nb.registry.get(merchant_id)
        state = self.state(key)
        now = time.time()
        ranking_id = serving.api_ranking_id(key, now)
        ranking = self.engagement.rank(merchant, state, now, ranking_id)
        if ranking.first is not None:
            metrics.ENGAGEMENT_RANKED.labels(merchant_id, ranking.first.action.id).inc()
        return view.json(
            {
                "merchant": merchant_id,
                "customer": customer,
                "ranking_id": ranking_id,
                "ranking": ranking.mode,
                "model_version": ranking.version,
                "propensity": round(ranking.propensity, 6),
                "known_customer": state is not None,
                "actions": [item.as_record() for item in ranking.items[:n]],
            }
        )

    async def start_job(self, view: View, request: Request) -> Response:
        body = await self.body(request)
        try:
            request_json = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ApiError(400, 'expected a JSON body {"merchant": "<id>"}') from None
        if not isinstance(request_json, dict) or not isinstance(request_json.get("merchant"), str):
            raise ApiError(400, 'expected a JSON body {"merchant": "<id>"}')
        merchant = self.merchant(request, request_json["merchant"], "train")
        forwarded = await self.forward(view, request, merchant.encode(), body)
        if forwarded is not None:
            return forwarded
        job = self.trainer.start(merchant)
        return view.json(asdict(job), status=202, headers={"Location": f"/predictors/{job.job}"})

    async def job_status(self, view: View, request: Request, job: str) -> Response:
        merchant, _, suffix = job.rpartition(".")
        if not merchant or not JOB_SUFFIX.fullmatch(suffix):
            raise ApiError(404, "unknown job")
        self.auth.require(request, merchant, "train")
        if merchant not in self.nb.registry:  # nor a file name to look for
            raise ApiError(404, "unknown job")
        forwarded = await self.forward(view, request, merchant.encode())
        if forwarded is not None:
            return forwarded
        found = self.trainer.get(job)
        if found is None:
            raise ApiError(404, "unknown job")
        return view.json(asdict(found))

    async def events(self, view: View, request: Request) -> Response:
        caller = self.auth.caller(request, "ingest")
        body = await self.body(request)
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"body is not JSON: {exc}") from None
        events = document.get("events") if isinstance(document, dict) else document
        if not isinstance(events, list):
            raise ApiError(400, 'expected {"events": [...]} or a JSON array of events')
        limit = self.nb.settings.api_max_events
        if len(events) > limit:
            raise ApiError(413, f"{len(events)} events in one request; at most {limit}")
        foreign = [
            index
            for index, event in enumerate(events)
            if isinstance(event, dict)
            and isinstance(event.get("merchant_id"), str)
            and not caller.may_access(event["merchant_id"])
        ]
        if foreign:  # the whole request: a client that mixes merchants is misconfigured
            raise ApiError(
                403, "this token cannot send events for another merchant", indices=foreign
            )
        errors, sends = [], []
        for index, event in enumerate(events):
            try:
                kind, key, raw = self.check_event(event)
            except InvalidEvent as exc:
                errors.append({"index": index, "reason": exc.reason, "error": str(exc)})
                continue
            except VALIDATOR_ERRORS as exc:
                log.warning("POST /events: the validator raised %s", type(exc).__name__)
                error = f"the event does not fit its contract ({type(exc).__name__}: {exc})"
                errors.append({"index": index, "reason": "schema_violation", "error": error})
                continue
            sends.append(await self.topics[kind].send(key=key, value=raw))
        if sends:
            await asyncio.gather(*sends)
        log.info(
            "POST /events from %s: %d accepted, %d rejected",
            caller.merchant,
            len(sends),
            len(errors),
        )
        return view.json(
            {"accepted": len(sends), "rejected": len(errors), "errors": errors}, status=202
        )

    async def customer_state(self, view: View, request: Request, key: str) -> Response:
        merchant, who, customer = key.split(":", 2) if key.count(":") >= 2 else ("", "", "")
        if who not in ("c", "s") or not customer:
            raise ApiError(
                400, "key: expected <merchant>:c:<customer_id> or <merchant>:s:<session>"
            )
        check_id("key", customer)
        self.merchant(request, merchant, "read")
        forwarded = await self.forward(view, request, key.encode())
        if forwarded is not None:
            return forwarded
        raw = self.nb.customers.get(key.encode())
        if raw is None:
            raise ApiError(404, f"no state for {key!r}")
        return view.bytes(orjson.dumps(orjson.loads(raw)), content_type="application/json")

    async def ready(self, view: View, request: Request) -> Response:
        state = worker_readiness(self.nb, self.settled)
        self.settled = self.settled or state.ready
        body = {"ready": state.ready, "partitions": state.partitions}
        if state.rebalancing:
            body["rebalancing"] = True
        if not state.ready:  # the API's error shape, the reason as its message
            return view.json({**body, "error": state.reason}, status=503)
        return view.json(body)

    def check_event(self, event: object) -> tuple[str, bytes, bytes]:
        """(topic kind, record key, record value) of a valid event; InvalidEvent otherwise."""
        if not isinstance(event, dict):
            raise InvalidEvent("malformed_json", "an event must be a JSON object")
        event_type = event.get("event_type")
        kind = ALL_EVENT_TYPES.get(event_type) if isinstance(event_type, str) else None
        if kind is None:
            raise InvalidEvent("unknown_event_type", f"unknown event_type {event_type!r}")
        try:
            raw = orjson.dumps(event)
        except orjson.JSONEncodeError as exc:  # nested deeper than orjson writes, for one
            raise InvalidEvent("malformed_json", f"cannot be written back as JSON: {exc}") from None
        settings = self.nb.settings
        data = parse_event(raw, kind, settings.max_event_bytes, settings.max_future_s or None)
        merchant = data["merchant_id"]
        if merchant not in self.nb.registry:
            raise InvalidEvent("unknown_merchant", f"merchant_id {merchant!r} is not configured")
        key = state_key(merchant, data.get("customer_id"), data.get("session_id"))
        return kind, key.encode(), raw


def offer_json(offer: Offer) -> dict:
    return {
        "offer_type": offer.offer_type,
        "promotion_id": offer.promotion_id,
        "message": offer.message,
        "percent_off": offer.percent_off,
        "amount_to_next_tier": offer.amount_to_next_tier,
        "recommendations": list(offer.recommendations),
        "recommendation_sources": list(offer.recommendation_sources),
    }


async def openapi(view: View, request: Request) -> Response:
    return view.json(OPENAPI)


def register(
    nb: NextbestApp,
    policy: Policy,
    models: ModelLookup | None = None,
    engagement: Engagement | None = None,
) -> Api:
    """Add the API's views to the worker's web server."""
    api = Api(nb, policy, models, engagement)
    app = nb.app

    def page(path: str, **methods: Callable) -> None:
        def make(handler: Callable) -> Callable:
            async def method(self: View, request: Request, **kwargs: str) -> Response:
                return await api.handle(
                    self, request, path, lambda: handler(self, request, **kwargs)
                )

            return method

        view = type(
            f"api{path.replace('/', '_')}",
            (View,),
            {name: make(handler) for name, handler in methods.items()},
        )
        app.page(path)(view)

    page("/product-recommendations", get=api.recommendations)
    page("/similar-items", get=api.similar_items)
    page("/best-promotion", get=api.best_promotion)
    page("/next-best-actions", get=api.next_best_actions)
    page("/predictors", post=api.start_job)
    page("/predictors/{job}", get=api.job_status)
    page("/events", post=api.events)
    page("/customers/{key}/", get=api.customer_state)
    page("/openapi.json", get=openapi)
    page("/ready", get=api.ready)

    @app.on_before_shutdown.connect
    async def stop_jobs(app: faust.App, **kwargs: object) -> None:
        api.trainer.stop()

    return api
