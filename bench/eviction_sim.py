#!/usr/bin/env python3
"""bench/eviction_sim.py - which idle connection to close when the budget is
spent, simulated: the share of requests that find their user's connection
(no login) under least recently used, LRU-2, and a request count halving
every H requests (what src/pool.c does, with H in time), against a perfect
cache. One connection per user, C slots, Zipf-distributed users; no timing.

    bench/eviction_sim.py [--users 1000] [--slots 64] [--s 1.1] [--requests 60000]

BENCHMARKS.md (profile 2) quotes its output for the defaults.
"""
import argparse
import collections
import random


def lru(reqs, slots):
    cache, hits = collections.OrderedDict(), 0
    for u in reqs:
        if u in cache:
            hits += 1
            cache.move_to_end(u)
            continue
        if len(cache) >= slots:
            cache.popitem(last=False)
        cache[u] = True
    return hits / len(reqs)


def lru2(reqs, slots):
    cache, last, prev, hits = set(), {}, {}, 0
    for t, u in enumerate(reqs):
        prev[u], last[u] = last.get(u, -1), t
        if u in cache:
            hits += 1
            continue
        if len(cache) >= slots:
            cache.remove(min(cache, key=lambda x: (prev[x], last[x])))
        cache.add(u)
    return hits / len(reqs)


def decayed_count(reqs, slots, half_life):
    cache, heat, at, hits = set(), {}, {}, 0

    def heat_now(x, t):
        return heat[x] * 2.0 ** (-(t - at[x]) / half_life)

    for t, u in enumerate(reqs):
        heat[u] = (heat_now(u, t) if u in heat else 0.0) + 1.0
        at[u] = t
        if u in cache:
            hits += 1
            continue
        if len(cache) >= slots:
            cache.remove(min(cache, key=lambda x: heat_now(x, t)))
        cache.add(u)
    return hits / len(reqs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--s", type=float, default=1.1)
    ap.add_argument("--requests", type=int, default=60000)
    a = ap.parse_args()
    weights = [1 / k ** a.s for k in range(1, a.users + 1)]
    random.seed(1)
    reqs = random.choices(range(a.users), weights=weights, k=a.requests)
    print(f"{a.requests} requests, {a.users} users (Zipf s={a.s}), {a.slots} slots: share without a login")
    print(f"  least recently used  {lru(reqs, a.slots):.3f}")
    print(f"  LRU-2                {lru2(reqs, a.slots):.3f}")
    for h in (300, 1000, 3000, 10000):
        print(f"  decayed count, half-life {h:5d} requests  {decayed_count(reqs, a.slots, h):.3f}")
    print(f"  perfect cache        {sum(weights[:a.slots]) / sum(weights):.3f}")


if __name__ == "__main__":
    main()
