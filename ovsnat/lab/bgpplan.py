"""The routed labs' one addressing plan (docs/bgp.md, section 8), for bgpfabric (FRR only),
routedhv and routedhost (with OVS and ovsnat's controller) and routedlab (`ovsnat lab up
--bgp`): host n has a /31 to each ToR in 10.254.n.0/24, ASN 4200100000 + n, and SNAT address
203.0.113.(10n + 1) as in the l2 lab; the routers' own links are above 10.254.199.
"""

from __future__ import annotations

TOR_ASNS = {"ta": 4200000001, "tb": 4200000002}
_OFFSET = {"ta": 0, "tb": 2}  # the ToR's address in each host's 10.254.n.0/24
MAX_HOSTS = 24  # 203.0.113.241 is the last SNAT address of the plan


def host_asn(n: int) -> int:
    return 4200100000 + n


def link_address(n: int, tor: str) -> str:
    """Host n's address on its link to ToR `ta` or `tb` (the kernel's port bgp0 or bgp1)."""
    return f"10.254.{n}.{_OFFSET[tor] + 1}"


def tor_address(n: int, tor: str) -> str:
    """The ToR's address on its link to host n."""
    return f"10.254.{n}.{_OFFSET[tor]}"


def tor_router_id(tor: str) -> str:
    return f"10.255.0.{_OFFSET[tor] + 1}"


def snat_address(n: int) -> str:
    return f"203.0.113.{10 * n + 1}"


def host_options(n: int) -> dict[str, str]:
    """Host n's [ovsnat] options for bgp mode (the rest are the defaults)."""
    if not 1 <= n <= MAX_HOSTS:
        raise ValueError(f"host {n}: the lab's plan has hosts 1 to {MAX_HOSTS}")
    return {
        "snat_ip": snat_address(n),
        "external_mode": "bgp",
        "bgp_asn": str(host_asn(n)),
        "bgp_uplinks": "up0,up1",
        "bgp_kernel_ports": "bgp0,bgp1",
        "bgp_links": f"{link_address(n, 'ta')}/31,{link_address(n, 'tb')}/31",
    }
