"""OpenFlow 1.3 on the wire, packed by hand: the match codec, the action codec and the
messages (ovsnat.openflow.messages). Pure: no framework import."""
