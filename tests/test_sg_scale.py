"""How security-group flows grow (issue 25 item 7), on compiled flows as values: ovsnat's grow
as rules + members, never rules x members, and the Neutron OVS firewall count the benchmark
sets beside them (bench/neutron_fw.py) says what its docstring says on a case small enough
to count by hand. The measured figures are in docs/performance.md ("Issue 25").
Pure unit tests: no root, no OVS.
"""

from __future__ import annotations

import random

from bench import neutron_fw
from bench.sgconfig import desired_state
from ovsnat.compile.compiler import compile_state
from ovsnat.model.secgroups import parse_bridge, port_ranges


def flows(ports=20, profiles=1, rules=6, members=50, groups=True) -> int:
    return len(compile_state(desired_state(ports, profiles, rules, members, groups)))


def test_no_rule_is_multiplied_by_the_members_of_the_group_it_names():
    for profiles in (1, 4):
        base, more_rules = flows(profiles=profiles), flows(profiles=profiles, rules=12)
        more_members = flows(profiles=profiles, members=100)
        both = flows(profiles=profiles, rules=12, members=100)
        assert both - more_rules == more_members - base  # no rules x members term
        # Every rule naming the remote group is an ingress rule: one flow per member.
        assert more_members - base == 50
        assert more_rules > base


def test_ports_sharing_their_groups_share_the_rules_flows():
    one = flows(ports=20) - flows(ports=20, groups=False)
    many = flows(ports=40) - flows(ports=40, groups=False)
    # 20 more filtered ports: each their own delivery through sg_in and two drop counters
    # (and their addresses were already members); the rules are compiled once.
    assert many - one == 20 * 3


def test_the_neutron_count_of_a_port_with_one_rule_and_one_remote_group_rule():
    security = parse_bridge(
        {
            "ovsnat-sg-g": "r1,in,4,tcp,80,-;r2,in,4,any,-,g:g;r3,in,4,tcp,8000-8099,-",
            "ovsnat-sgm-g": "10.0.0.1,10.0.0.2",
        }
    )
    c = neutron_fw.count([("g",)], security)
    assert c.base == 12 + 44
    assert c.rules == 2 * 1 + 2 * 3  # 8000-8099: 8000/26, 8064/27, 8096/30
    assert c.remote_rules == 2 + 2  # the rule's two ct_states, its conjunction's two accepts
    assert c.members == 2 * 2  # two members, one priority offset, two ct_states
    assert neutron_fw.count([("g",), ("g",)], security).members == c.members  # per network


def test_neutron_port_masks_are_as_many_as_ovsnats():
    rnd = random.Random(25)
    for _ in range(2000):
        lo = rnd.randint(1, 65535)
        hi = rnd.randint(lo, min(65535, lo + rnd.choice((0, 7, 100, 5000, 65535))))
        assert neutron_fw.blocks(lo, hi) == len(port_ranges(lo, hi)), (lo, hi)
