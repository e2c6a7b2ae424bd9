"""The affinity pull script (read_affinity_lua in common/jobops.c,
docs/protocol.md "Affinity") on a real redis-server, run as the worker
sends it: lanes and the starvation guard as the plain pull; an entry whose
key another live group with room holds is parked for it (pending under
"@<group>") and that group takes it first; the load rule (owner's free +
slack >= the slots the pull has left); a stale owner gets nothing; another
group takes a parked entry only after the bound; kept entries' keys name
the group that took them, with the TTL."""
import time

import redis

from test_jobops_scripts import lua

LANES = ["llmq:req:m1#high", "llmq:req:m1", "llmq:req:m1#low"]
APFX = "llmq:aff:m1#"
K1, K2 = "00000000000000a1", "00000000000000a2"


def pull(r, me, count, first=-1, wait_ms=300, ttl=60, slack=2, takeover=0):
    """{lane: [entry ids]}, the lanes where entries remain, each lane's newest id."""
    rep = r.eval(lua("read_affinity_lua"), 3, *LANES, "workers", me, count, first + 1, APFX, wait_ms, ttl, slack,
                 takeover)
    assert len(rep) == 6
    pull.tally = dict(zip(("parked", "takeovers", "claimed", "hits"), rep[5]))  # the worker's /metrics counts
    ids = [[dict(zip(e[1][::2], e[1][1::2]))[b"id"].decode() for e in rep[lane]] for lane in range(3)]
    return ids, rep[3], [x.decode() for x in rep[4]]


def setup(url):
    r = redis.Redis.from_url(url)
    r.eval(lua("group_lua"), 3, *LANES, "workers")
    return r


def room(r, group, free, age_ms=0):
    now = r.time()
    r.hset(APFX + "groups", group, f"{free} {now[0] * 1000 + now[1] // 1000 - age_ms}")


def test_lanes_as_the_plain_pull(redis_server):
    """Entries without keys: the same reads as read_lanes_lua (highest lane
    first, the guard's one entry, `more`), plus each lane's newest id."""
    r = setup(redis_server.url)
    for jid in ["l0", "l1"]:
        r.xadd(LANES[2], {"id": jid})
    r.xadd(LANES[1], {"id": "d0"})
    newest = [r.xadd(LANES[0], {"id": jid}).decode() for jid in ["h0", "h1", "h2"]][-1]
    assert pull(r, "w", 2)[:2] == ([["h0", "h1"], [], []], [1, 1, 1])
    assert pull(r, "w", 1, first=2)[:2] == ([[], [], ["l0"]], [1, 1, 1])
    got, more, last = pull(r, "w", 3)
    assert (got, more) == ([["h2"], ["d0"], ["l1"]], [0, 0, 0])
    assert last[0] == newest
    assert pull(r, "w", 3)[:2] == ([[], [], []], [0, 0, 0])


def test_parked_for_the_owner_and_taken_by_it(redis_server):
    r = setup(redis_server.url)
    r.set(APFX + K1, "A")
    room(r, "A", 4)
    r.xadd(LANES[1], {"id": "j1", "a": f"{K2} {K1}"})  # K1 (the last) names A
    r.xadd(LANES[1], {"id": "j2", "a": K2})            # no one holds K2
    assert pull(r, "B", 4)[0] == [[], ["j2"], []]
    assert pull.tally == dict(parked=1, takeovers=0, claimed=0, hits=0)
    pend = r.xpending_range(LANES[1], "workers", "-", "+", 10)
    assert [p["consumer"].decode() for p in pend] == ["@A", "B"]  # j1, parked; j2 is B's (kept, returned)
    assert r.get(APFX + K2) == b"B" and 0 < r.ttl(APFX + K2) <= 60  # j2's key names B now
    assert r.hget(APFX + "groups", "A").split()[0] == b"3"  # A's room counts the parked entry
    assert pull(r, "A", 4)[0] == [[], ["j1"], []]  # A takes it first
    assert pull.tally == dict(parked=0, takeovers=0, claimed=1, hits=0)
    assert r.get(APFX + K1) == b"A" and r.get(APFX + K2) == b"A"  # j1's keys, K2 included
    r.xadd(LANES[1], {"id": "j3", "a": K2})
    assert pull(r, "A", 4)[0] == [[], ["j3"], []]  # read new by the group its key names: a hit
    assert pull.tally == dict(parked=0, takeovers=0, claimed=0, hits=1)


def test_load_rule_and_stale_owner(redis_server):
    r = setup(redis_server.url)
    r.set(APFX + K1, "A")
    room(r, "A", 1)  # 1 + slack 2 < 4 slots left: B keeps it
    r.xadd(LANES[1], {"id": "j1", "a": K1})
    assert pull(r, "B", 4)[0] == [[], ["j1"], []]
    assert r.get(APFX + K1) == b"B"
    r.set(APFX + K1, "A")
    room(r, "A", 8, age_ms=5000)  # A's record is older than max(wait, 1 s): gone, or full
    r.xadd(LANES[1], {"id": "j2", "a": K1})
    assert pull(r, "B", 4)[0] == [[], ["j2"], []]


def test_takeover_after_the_bound(redis_server):
    r = setup(redis_server.url)
    r.set(APFX + K1, "A")
    room(r, "A", 4)
    r.xadd(LANES[1], {"id": "j1", "a": K1})
    assert pull(r, "B", 4)[0] == [[], [], []]  # parked for A
    assert pull(r, "B", 4, takeover=1)[0] == [[], [], []]  # not yet waited 300 ms
    time.sleep(0.35)
    assert pull(r, "B", 4, takeover=0)[0] == [[], [], []]  # only on a takeover pass
    assert pull(r, "B", 4, takeover=1)[0] == [[], ["j1"], []]
    assert pull.tally == dict(parked=0, takeovers=1, claimed=0, hits=0)
    assert r.get(APFX + K1) == b"B"
    assert r.xpending(LANES[1], "workers")["pending"] == 1  # B's now, to be acked as usual


def test_keys_set_at_powers_of_two_and_the_last_two(redis_server):
    """Of 12 keys, those at positions 1, 2, 4, 8, 11 and 12 name the group."""
    r = setup(redis_server.url)
    ks = ["%016x" % (0xb00 + i) for i in range(1, 13)]
    r.xadd(LANES[1], {"id": "j1", "a": " ".join(ks)})
    assert pull(r, "A", 4)[0] == [[], ["j1"], []]
    assert [i + 1 for i, k in enumerate(ks) if r.get(APFX + k) == b"A"] == [1, 2, 4, 8, 11, 12]
    assert len(r.keys(APFX + "0*")) == 6
