"""What a port's flows depend on beyond its keys and the host config: whether its VM has
shown up here. Kept apart from the host state's compiled parts, so a new host config
(ovsnat.core.state.HostState.set_config) recompiles everything and keeps this.

- A FIP is live here once its VM showed up (`active`; ovsnat.core.fips), goes dark when
  another host announced it (`yielded`), and a dark FIP's frames stop being copied up once
  they can prove nothing more (`heard`).
- A PAT VM in its arrival grace (`arrived`), or gone within its departure grace
  (`departed`, with the port it was) keeps its sessions across a live migration
  (ovsnat.core.handoff).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ovsnat.model import VmPort


@dataclass
class Standing:
    active: set[str] = field(default_factory=set)
    yielded: set[str] = field(default_factory=set)
    heard: set[str] = field(default_factory=set)
    arrived: set[str] = field(default_factory=set)
    departed: dict[str, VmPort] = field(default_factory=dict)

    def forget(self, name: str) -> None:
        """The port is gone, or on a new device: its VM must show up (again) before its FIP
        answers or its arrival counts. A departure is the handoff's to end."""
        self.active.discard(name)
        self.yielded.discard(name)
        self.heard.discard(name)
        self.arrived.discard(name)

    def of(self, names: set[str]) -> Standing:
        """A copy for these ports only, without departures (they are made again)."""
        return Standing(
            self.active & names, self.yielded & names, self.heard & names, self.arrived & names
        )

    def marked(self) -> set[str]:
        """The ports whose flows depend on their standing."""
        return self.active | self.yielded | self.heard | self.arrived

    def copies(self, name: str) -> str:
        """Which frames of a dark FIP go up (ovsnat.compile.vm.vm_flows `copies`)."""
        return "none" if name in self.heard else "arp" if name in self.yielded else "all"
