"""Frames read and built byte by byte, pure: ARP, ICMP errors, DHCP, the Internet checksum.
A VM controls every byte it sends, so every reader here is defensive; nothing imports the
framework's packet library."""
