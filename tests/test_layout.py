"""Striping arithmetic: the per-stripe views of a per-symbol table."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ftstore.codec.layout import MAX_STRIPE_BYTES, Layout, stripe_count, stripes_allowed


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
