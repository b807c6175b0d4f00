"""The built public answers' cache (web.answer_cache): fingerprint, age, bounds."""

from __future__ import annotations

from web.answer_cache import AnswerCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_serves_while_its_fingerprint_holds_and_it_is_young() -> None:
    clock = Clock()
    cache = AnswerCache(max_age_open_s=10, max_age_closed_s=100, clock=clock)
    cache.put("s1", b"fp", {"n": 1}, [], 100, closed=False)
    cache.put("s2", b"fp", {"n": 2}, [], 100, closed=True)
    hit = cache.get("s1", b"fp")
    assert hit is not None and hit.body == {"n": 1}
    assert cache.get("s1", b"other") is None  # the data changed: dropped
    assert cache.get("s1", b"fp") is None
    clock.now = 50
    assert cache.get("s2", b"fp") is not None  # closed: up to 100 s
    cache.put("s1", b"fp", {"n": 1}, [], 100, closed=False)
    clock.now = 61
    assert cache.get("s1", b"fp") is None  # open: up to 10 s
    clock.now = 151
    assert cache.get("s2", b"fp") is None
    assert (cache.hits, cache.misses) == (2, 4)
    assert len(cache) == 0 and cache.bytes == 0


def test_bounded_by_entries_and_bytes_least_recently_used_first() -> None:
    cache = AnswerCache(max_entries=3, max_bytes=1000)
    for key in ("a", "b", "c"):
        cache.put(key, 0, {}, [], 300, closed=True)
    assert cache.get("a", 0) is not None  # "b" is now the least recently used
    cache.put("d", 0, {}, [], 300, closed=True)
    assert cache.get("b", 0) is None and len(cache) == 3 and cache.bytes == 900
    cache.put("e", 0, {}, [], 500, closed=True)  # over the bytes: the oldest two go
    assert [k for k in ("a", "c", "d", "e") if cache.get(k, 0) is not None] == ["d", "e"]
    assert cache.bytes == 800
    cache.put("huge", 0, {}, [], 5000, closed=True)  # bigger than the whole cache: not kept
    assert cache.get("huge", 0) is None and cache.bytes == 800
    cache.put("d", 0, {"again": True}, [], 100, closed=True)  # replacing an entry
    assert cache.bytes == 600
