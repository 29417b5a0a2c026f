"""Striping arithmetic: the per-stripe views of a per-symbol table, the stripes a writer
chooses, and the tasks the workers take."""

import pickle
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftstore.codec.layout import (LARGE_STRIPE_BYTES, MAX_STRIPE_BYTES, MAX_STRIPE_SYMBOLS, SAFETY_SYMBOLS,
                                  TARGET_STRIPE_BYTES, TASK_BYTES, WRITER_STRIPES, Layout, stripe_count, stripe_groups,
                                  stripes_allowed, writer_stripes)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 3 << 20), symbol_exp=st.integers(8, 14), extra_stripes=st.integers(0, 5))
def test_stripe_entries_gather_and_scatter_every_symbol_once(size, symbol_exp, extra_stripes):
    t = 1 << symbol_exp
    n = -(-size // t)
    stripes = min(n, stripe_count(size, t) + extra_stripes)
    assert stripes_allowed(size, t, stripes)
    lay = Layout.plan(size, 0.1, t, stripes)
    table = random.Random(size).randbytes(n * 16)
    back = bytearray(len(table))
    for s in range(lay.stripes):
        entries = lay.stripe_entries(table, s, 16)
        want = b"".join(table[lay.global_index(s, i) * 16 : (lay.global_index(s, i) + 1) * 16] for i in range(lay.stripe_k(s)))
        assert entries == want
        lay.put_stripe_entries(back, s, 16, entries)
    assert bytes(back) == table


def test_recorded_stripe_counts_outside_the_limits_are_not_allowed():
    size, t = 100 << 20, 16384
    assert not stripes_allowed(size, t, stripe_count(size, t, MAX_STRIPE_BYTES) - 1)  # stripes over 8 MiB
    assert not stripes_allowed(size, t, -(-size // t) + 1)  # an empty stripe
    assert stripes_allowed(size, t, stripe_count(size, t)) and stripes_allowed(size, t, stripe_count(size, t, MAX_STRIPE_BYTES))


@settings(max_examples=300, deadline=None)
@given(size=st.one_of(st.integers(0, 64 << 20), st.integers(0, 1 << 41)),
       overhead=st.sampled_from([0.01, 0.02, 0.05, 0.1, 0.5, 1.0]))
def test_a_writers_layout_is_one_readers_accept_with_the_fewest_stripes_its_rule_allows(size, overhead):
    """Stripes of at least 6 / r symbols (two spares each: at most a third of the overhead
    asked for), between 1 MiB and 4 MiB; at most 65536 of them unless 4 MiB stripes need
    more, so the header's list of repair counts never outgrows what 4 MiB stripes give the
    largest payloads. Readers accept every such layout."""
    lay = Layout.plan(size, overhead)
    t = lay.symbol_size
    assert stripes_allowed(size, t, lay.stripes)
    assert lay.stripes <= max(WRITER_STRIPES, stripe_count(size, t, LARGE_STRIPE_BYTES))
    assert all(lay.stripe_k(s) * t <= max(LARGE_STRIPE_BYTES, t) for s in (0, lay.stripes - 1) if lay.stripes)
    if 1 < lay.stripes < WRITER_STRIPES:  # one stripe fewer would make some stripe longer than the rule's
        wanted = min(max(TARGET_STRIPE_BYTES // t, -(-3 * SAFETY_SYMBOLS // overhead)), LARGE_STRIPE_BYTES // t)
        assert -(-lay.source_symbols // (lay.stripes - 1)) > min(wanted, MAX_STRIPE_SYMBOLS)


@pytest.mark.parametrize("overhead, symbols", [(0.1, 64), (1.0, 64), (0.05, 120), (0.02, 256), (0.01, 256)])
def test_stripes_hold_at_least_six_over_r_symbols_between_1_and_4_mib(overhead, symbols):
    """10 GiB in 16 KiB symbols: 1 MiB stripes at the default 10% (the two spares are 3% of
    each), longer ones where the overhead is low, up to the 4 MiB earlier writers used."""
    assert Layout.plan(10 << 30, overhead).stripe_k(0) == symbols


@settings(max_examples=100, deadline=None)
@given(size=st.one_of(st.integers(0, 64 << 20), st.integers(0, 1 << 41)), symbol_exp=st.integers(8, 14),
       extra=st.integers(0, 3))
def test_a_layout_pickles_compactly_and_comes_back_equal(size, symbol_exp, extra):
    """Every task sent to a worker carries its layout: its size must not grow with the
    stripe count (a tuple of 65536 counts pickled into each of 32768 tasks is 15 GB)."""
    t = 1 << symbol_exp
    stripes = min(-(-size // t), writer_stripes(size, t) + extra)
    lay = Layout.plan(size, 0.1, t, stripes)
    lay.repair_starts  # a cached property is never what is pickled
    data = pickle.dumps(lay)
    assert len(data) < 400
    back = pickle.loads(data)
    assert back == lay and back.repair_counts == lay.repair_counts and back.repair_starts == lay.repair_starts


@settings(max_examples=100, deadline=None)
@given(size=st.integers(0, 4 << 30), symbol_exp=st.integers(8, 14))
def test_stripe_groups_cover_every_stripe_once_in_order_in_tasks_of_at_most_8_mib(size, symbol_exp):
    t = 1 << symbol_exp
    lay = Layout.plan(size, 0.1, t, writer_stripes(size, t))
    groups = stripe_groups(lay)
    assert [s for g in groups for s in g] == list(range(lay.stripes))
    for g in groups:
        assert len(g) == 1 or sum(lay.stripe_k(s) * t for s in g) <= TASK_BYTES
