"""ovsnat-metadata-proxy: one metadata proxy per hypervisor (docs/metadata.md).

A VM's request to 169.254.169.254:80 reaches the proxy with its OpenFlow port encoded in
the source address (ovsnat.model.metadata). Per request the proxy reads that port's
Interface row from OVSDB, signs the instance id with Nova's shared secret and forwards to
Nova's metadata API with the fields Neutron's metadata agent adds.

Why a small asyncio server and not haproxy, as Neutron and OVN use: the VM's identity is
the port its request came from, and turning that into a signed instance id needs an
OVSDB lookup and an HMAC per request, which haproxy cannot do itself. Neutron therefore
runs haproxy plus a second hop over a unix socket to its agent, which does the lookup
(with a cache that can go stale); here one process does it all in one hop, with nothing
cached. The limits are per VM port (a token bucket and a connection share keyed on the
ofport, checked before any lookup, so a flood costs no lookup); haproxy's stick tables
could key on the encoded source too, but only in front of that second hop. And it needs
no new Debian package: the standard library plus ovsnat's own OVSDB and model code.

Modules: `request` and `headers` (pure HTTP in and out), `identity` (row -> instance,
pure), `limits` and `counters` (pure, take `now`), `backend` (Nova, asyncio), `server`
(one connection), `netns` (namespace, veth, listening socket), `main` (the command).
"""
