"""The engagement and churn ground truth of the simulator (``models.promotion.engagement_sim``):
seeded draws, lapses without engagement, what a take or a retention response changes, and the
catalog values derived from the config."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from models.promotion.engagement_sim import (
    ACTIONS,
    APP,
    CART,
    LOYALTY,
    MESSAGE,
    NEWSLETTER,
    CustomerWorld,
    EngagementSimConfig,
    EngagementTruth,
    catalog_values,
    engagement_catalog,
    expected_activity,
)
from models.promotion.simulator import SIM_MERCHANT, Population, SimConfig, calibrate
from streams.merchants.catalog import parse_merchant

SIM = SimConfig(customers=200, weeks=6, seed=5)


@pytest.fixture(scope="module")
def population() -> Population:
    return Population.draw(calibrate(), SIM)


def world_of(population: Population, config: EngagementSimConfig, **truth: object):
    drawn = EngagementTruth.draw(population, SIM, config)
    return CustomerWorld(population, SIM, config, replace(drawn, **truth))


def test_same_seed_same_draws_and_the_simulators_draws_untouched(population):
    config = EngagementSimConfig()
    a, b = (EngagementTruth.draw(population, SIM, config) for _ in range(2))
    for name in ("take_logit", "hazard", "u_take", "u_dismiss", "u_lapse", "u_respond"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    other = EngagementTruth.draw(population, replace(SIM, seed=6), config)
    assert not np.array_equal(a.u_take, other.u_take)
    again = Population.draw(calibrate(), SIM)
    assert np.array_equal(again.u_cart, population.u_cart)


def test_without_engagement_the_purchase_rate_decays(population):
    config = EngagementSimConfig(lapse_decay=0.5)
    world = world_of(population, config, hazard=np.ones(SIM.customers))
    before = [world.cart_probability(i) for i in range(SIM.customers)]
    world.end_week(0)
    assert world.lapsing.all() and np.allclose(world.activity, 0.5)
    world.end_week(1)
    assert np.allclose(world.activity, 0.25)
    after = [world.cart_probability(i) for i in range(SIM.customers)]
    assert after == pytest.approx([p * 0.25 for p in before], rel=1e-9)


def test_a_take_resets_the_lapse_and_changes_behaviour_as_configured(population):
    config = EngagementSimConfig(lapse_decay=0.5, loyalty_lift=0.5, app_hazard_factor=0.25)
    n = SIM.customers
    u_take = np.zeros((n, SIM.weeks, 2))  # every showing is taken
    world = world_of(population, config, hazard=np.ones(n), u_take=u_take)
    world.end_week(0)
    i = int(np.argmin(population.cart_rate))  # a cart chance well below 1
    lapsed = world.cart_probability(i)
    assert world.show(i, 1, LOYALTY, CART) == "taken"
    assert world.activity[i] == 1.0 and not world.lapsing[i]
    assert world.cart_probability(i) == pytest.approx(lapsed / 0.5 * 1.5)
    assert world.show(i, 1, LOYALTY, MESSAGE) == "ignored"  # already a member
    # an app user's hazard is a quarter: a uniform between h/4 and h lapses the others only
    j = (i + 1) % n
    world.show(j, 1, APP, CART)
    hazard = np.full(n, 0.4)
    world.truth.hazard[:] = hazard
    world.truth.u_lapse[:, 1] = 0.2
    world.end_week(1)
    assert world.lapsing[i] and world.activity[i] == 0.5  # 0.2 < 0.4: lapses again
    assert not world.lapsing[j] and world.activity[j] == 1.0  # 0.2 >= 0.1: an app user stays


def test_the_newsletter_re_engages_a_lapsing_subscriber(population):
    config = EngagementSimConfig(newsletter_reengage=0.5)
    n = SIM.customers
    world = world_of(
        population,
        config,
        hazard=np.ones(n),
        u_take=np.zeros((n, SIM.weeks, 2)),
        u_reengage=np.full((n, SIM.weeks), 0.4),
    )
    world.show(0, 0, NEWSLETTER, CART)
    world.end_week(0)  # everyone starts to lapse
    assert world.lapsing[0] and world.lapsing[1]
    world.end_week(1)  # 0.4 < 0.5: the subscriber is back, the other decays on
    assert world.activity[0] == 1.0 and not world.lapsing[0]
    assert world.activity[1] == pytest.approx(config.lapse_decay**2)


def test_answers_follow_the_hidden_take_probability(population):
    config = EngagementSimConfig(dismiss_share=1.0)
    world = world_of(population, config)
    answers = [world.show(i, 0, NEWSLETTER, CART) for i in range(SIM.customers)]
    taken = [world.p_take(i, NEWSLETTER) > world.truth.u_take[i, 0, CART] for i in range(200)]
    assert [a == "taken" for a in answers] == taken
    assert {a for a in answers if a != "taken"} == {"dismissed"}  # dismiss_share 1


def test_frequent_buyers_join_the_loyalty_club_more_often(population):
    world = CustomerWorld(population, SIM, EngagementSimConfig(take_spread=1e-9))
    rate = population.orders_per_year
    frequent, rare = int(np.argmax(rate)), int(np.argmin(rate))
    assert world.p_take(frequent, LOYALTY) > world.p_take(rare, LOYALTY)


def test_a_retention_response_is_an_order_now_with_its_discount(population):
    config = EngagementSimConfig()
    n = SIM.customers
    world = world_of(population, config, u_respond=np.zeros((n, SIM.weeks)))
    i = 3
    assert world.p_respond(i, 0.10) > world.p_respond(i, 0.0)  # an offer helps
    basket = world.retention_message(i, 2, 10.0)
    assert basket == pytest.approx(float(population.cart_value[i, 2]))
    assert world.retention_margin[i] == pytest.approx(SIM.margin_rate * basket)
    assert world.retention_discount[i] == pytest.approx(round(0.1 * basket, 2))
    assert not world.cart_made(i)  # the next cart was brought forward ...
    assert world.cart_made(i)  # ... once
    never = world_of(population, config, u_respond=np.ones((n, SIM.weeks)))
    assert never.retention_message(i, 2, 10.0) is None and never.retention_margin[i] == 0.0


def test_the_chain_of_expected_activity_matches_the_world(population):
    assert expected_activity(0.0, 0.5, 4) == 4.0
    assert expected_activity(1.0, 0.5, 3) == pytest.approx(1 + 0.5 + 0.25)
    config = EngagementSimConfig(lapse_hazard=0.2, hazard_spread=1e-9, lapse_decay=0.6)
    totals = []
    for seed in range(60):
        sim = replace(SIM, seed=seed)
        world = CustomerWorld(
            population, sim, config, EngagementTruth.draw(population, sim, config)
        )
        total = np.zeros(SIM.customers)
        for week in range(SIM.weeks):
            total += world.activity
            world.end_week(week)
        totals.append(total.mean())
    assert np.mean(totals) == pytest.approx(expected_activity(0.2, 0.6, SIM.weeks), rel=0.02)


def test_catalog_values_disagree_with_take_rates(population):
    """A high-take low-value action beside low-take high-value ones: ranking by P(take) and by
    P(take) x value put different actions first."""
    config = EngagementSimConfig()
    values = catalog_values(population, SIM, config)
    assert all(v > 0 for v in values.values())
    assert values[LOYALTY] > values[APP] > values[NEWSLETTER]
    rates = config.base_take
    assert max(ACTIONS, key=rates.get) == NEWSLETTER
    assert max(ACTIONS, key=lambda a: rates[a] * values[a]) == LOYALTY
    actions = engagement_catalog(values, config)
    merchant = parse_merchant("sim", dict(SIM_MERCHANT, engagement_actions=actions))
    assert [a.id for a in merchant.engagement_actions] == list(ACTIONS)
