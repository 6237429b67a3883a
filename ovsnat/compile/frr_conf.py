"""FRR's configuration for a host in bgp mode, rendered from its BgpSettings (docs/bgp.md).

The file is static: a FIP never changes it, only a change of ovsnat.conf does. ovsnat
feeds FRR through two kernel tables (LIVE and MOVED) that zebra imports and bgpd
redistributes, so no `vtysh` call is ever on a FIP's path. Everything a host exports or
accepts is named by a route-map, as `bgp ebgp-requires-policy` (FRR's default since 7.4)
demands:

- OVSNAT-LIVE / OVSNAT-MOVED: the two tables' /32s inside bgp_announce, tagged with the
  state's community, at weight 0 so that a MOVED echo can beat this host's own path.
- OVSNAT-OUT: only this host's own /32s (empty AS path) inside bgp_announce. Without the
  AS-path match a host would pass one ToR's routes on to the other and become transit.
- OVSNAT-IN: the accepted routes (the default) and the other hosts' /32s (the echoes that
  tell who holds a FIP), MOVED ones at local preference 150.
- OVSNAT-FIB: what zebra may install in the kernel: the same two kinds, nothing else.

Pure: settings in, text out; `vtysh --dryrun` checks the result in the tests.
"""

from __future__ import annotations

from ovsnat.model.bgp import BgpSettings

HEADER = "! Rendered by `ovsnat bgp render` from ovsnat.conf: change that and render again."


def render(s: BgpSettings, hostname: str) -> str:
    """frr.conf for one host: zebra's imports, bfdd's profile and bgpd's sessions."""
    blocks = [
        _head(hostname),
        _lists(s),
        _route_maps(s),
        _zebra(s),
        _bfd(s),
        _bgp(s),
    ]
    return "\n!\n".join("\n".join(lines) for lines in blocks) + "\n!\nend\n"


def _head(hostname: str) -> list[str]:
    return [
        HEADER,
        "frr defaults traditional",
        f"hostname {hostname}",
        "log syslog informational",
        "service integrated-vtysh-config",
    ]


def _lists(s: BgpSettings) -> list[str]:
    lines = [
        f"ip prefix-list OVSNAT-ANNOUNCE seq {5 * i} permit {net} ge 32"
        for i, net in enumerate(s.announce, 1)
    ]
    lines += [
        f"ip prefix-list OVSNAT-ACCEPT seq {5 * i} permit {net}"
        for i, net in enumerate(s.accept, 1)
    ]
    lines += [
        "bgp as-path access-list OVSNAT-LOCAL seq 5 permit ^$",
        f"bgp community-list standard OVSNAT-MOVED seq 5 permit {s.moved_community}",
    ]
    return lines


def _route_maps(s: BgpSettings) -> list[str]:
    def entry(name: str, action: str, seq: int, *body: str) -> list[str]:
        return [f"route-map {name} {action} {seq}", *(f" {line}" for line in body), "exit"]

    announce = "match ip address prefix-list OVSNAT-ANNOUNCE"
    accept = "match ip address prefix-list OVSNAT-ACCEPT"
    return [
        *entry("OVSNAT-LIVE", "permit", 10, announce, f"set community {s.live_community}",
               "set weight 0"),
        *entry("OVSNAT-MOVED", "permit", 10, announce, f"set community {s.moved_community}",
               "set weight 0"),
        *entry("OVSNAT-OUT", "permit", 10, announce, "match as-path OVSNAT-LOCAL"),
        *entry("OVSNAT-IN", "permit", 10, accept),
        *entry("OVSNAT-IN", "permit", 20, announce, "match community OVSNAT-MOVED",
               "set local-preference 150"),
        *entry("OVSNAT-IN", "permit", 30, announce),
        *entry("OVSNAT-FIB", "permit", 10, accept),
        *entry("OVSNAT-FIB", "permit", 20, announce),
    ]  # fmt: skip


def _zebra(s: BgpSettings) -> list[str]:
    """Both tables imported at zebra's default distance (15): at a higher one, another
    host's echo (20) would win and this host could never announce the prefix itself."""
    return [
        f"ip import-table {s.table}",
        f"ip import-table {s.moved_table}",
        "ip protocol bgp route-map OVSNAT-FIB",
    ]


def _bfd(s: BgpSettings) -> list[str]:
    return [
        "bfd",
        " profile ovsnat",
        f"  transmit-interval {s.bfd_interval}",
        f"  receive-interval {s.bfd_interval}",
        f"  detect-multiplier {s.bfd_multiplier}",
        " exit",
        "exit",
    ]


def _bgp(s: BgpSettings) -> list[str]:
    """eBGP to each ToR. Graceful restart as the restarting side only (the ToRs are
    helpers: on both sides a dead ToR's routes stayed 120 s, docs/bgp.md section 1);
    coalesce-time 100 brings the routes back within about 0.2 s of a session's start.
    The ToRs have ASNs of their own, so the default route has both as next hops (the ToRs
    alive: the select group's buckets) only with multipath-relax."""
    neighbors = [f" neighbor {link.peer} peer-group TOR" for link in s.links]
    return [
        f"router bgp {s.asn}",
        f" bgp router-id {s.router_id}",
        " no bgp default ipv4-unicast",
        " bgp ebgp-requires-policy",
        " bgp graceful-restart",
        " bgp bestpath as-path multipath-relax",
        " coalesce-time 100",
        " neighbor TOR peer-group",
        " neighbor TOR remote-as external",
        " neighbor TOR bfd profile ovsnat",
        " neighbor TOR advertisement-interval 0",
        *neighbors,
        " !",
        " address-family ipv4 unicast",
        f"  redistribute table {s.table} route-map OVSNAT-LIVE",
        f"  redistribute table {s.moved_table} route-map OVSNAT-MOVED",
        "  maximum-paths 4",
        "  neighbor TOR activate",
        "  neighbor TOR route-map OVSNAT-IN in",
        "  neighbor TOR route-map OVSNAT-OUT out",
        f"  neighbor TOR maximum-prefix-out {s.max_routes}",
        " exit-address-family",
        "exit",
    ]
