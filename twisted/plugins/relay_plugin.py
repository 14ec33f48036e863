"""The `twistd relay` plugin. Kept tiny: twistd imports every plugin module when it lists them."""

from twisted.application.service import ServiceMaker

relay = ServiceMaker(
    "relay",
    "relay.tap",
    "An end-to-end encrypted dead-drop mailbox and live rendezvous relay (Zax-compatible).",
    "relay",
)
