"""Channel history: offsets, epochs, size and age limits, recovery (pure, no I/O)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidewire.realtime.channels import History, new_epoch


def test_offsets_count_from_one() -> None:
    """Publications are numbered 1, 2, 3 ... and carry the publish envelope."""
    history = History("c", size=10, ttl=None)
    pubs = [history.append({"n": i}, now=0.0) for i in range(3)]
    assert [p.offset for p in pubs] == [1, 2, 3]
    assert pubs[0].envelope() == {
        "type": "publish",
        "channel": "c",
        "payload": {"n": 0},
        "offset": 1,
    }


def test_recovery_returns_missed_in_order() -> None:
    """since(epoch, n) returns exactly the publications after n, in order."""
    history = History("c", size=10, ttl=None)
    for i in range(5):
        history.append(i, now=0.0)
    rec = history.since(history.epoch, 2, now=0.0)
    assert rec.recovered and rec.offset == 5
    assert [p.payload for p in rec.publications] == [2, 3, 4]


def test_up_to_date_subscriber_recovers_nothing() -> None:
    """A subscriber at the top offset is recovered with no publications."""
    history = History("c", size=3, ttl=None)
    history.append("a", now=0.0)
    rec = history.since(history.epoch, 1, now=0.0)
    assert rec.recovered and rec.publications == ()


def test_changed_epoch_is_not_recovered() -> None:
    """A different epoch (a restarted broker) answers recovered=False."""
    history = History("c", size=3, ttl=None)
    history.append("a", now=0.0)
    assert not history.since("other", 0, now=0.0).recovered


def test_gap_older_than_size_is_not_recovered() -> None:
    """When the missed publications were already dropped, recovered is False."""
    history = History("c", size=2, ttl=None)
    for i in range(5):
        history.append(i, now=0.0)
    assert not history.since(history.epoch, 1, now=0.0).recovered
    rec = history.since(history.epoch, 3, now=0.0)
    assert rec.recovered and [p.payload for p in rec.publications] == [3, 4]


def test_gap_older_than_ttl_is_not_recovered() -> None:
    """Publications older than ttl are forgotten, so recovering past them fails."""
    history = History("c", size=10, ttl=5.0)
    history.append("old", now=0.0)
    history.append("new", now=4.0)
    assert history.since(history.epoch, 0, now=4.5).recovered
    assert not history.since(history.epoch, 0, now=6.0).recovered
    rec = history.since(history.epoch, 1, now=6.0)
    assert rec.recovered and [p.payload for p in rec.publications] == ["new"]


def test_offset_from_the_future_is_not_recovered() -> None:
    """An offset beyond the top (another epoch's numbering) is not recovered."""
    history = History("c", size=3, ttl=None)
    assert not history.since(history.epoch, 4, now=0.0).recovered


def test_size_zero_keeps_offsets_only() -> None:
    """size=0 numbers publications but keeps none."""
    history = History("c", size=0, ttl=None)
    history.append("a", now=0.0)
    history.append("b", now=0.0)
    assert history.top == 2 and len(history) == 0
    assert not history.since(history.epoch, 1, now=0.0).recovered
    with pytest.raises(ValueError):
        History("c", size=-1, ttl=None)


def test_epochs_are_random() -> None:
    """Two epochs differ (so a restart is detected)."""
    assert new_epoch() != new_epoch()


@given(st.integers(1, 20), st.integers(0, 60), st.integers(0, 70))
def test_recovery_never_skips_or_duplicates(size: int, published: int, seen: int) -> None:
    """Recovery either returns exactly offsets seen+1..top or says recovered=False."""
    history = History("c", size=size, ttl=None)
    for i in range(published):
        history.append(i, now=0.0)
    rec = history.since(history.epoch, seen, now=0.0)
    if rec.recovered:
        assert [p.offset for p in rec.publications] == list(range(seen + 1, published + 1))
    else:
        assert seen > published or published - seen > size
