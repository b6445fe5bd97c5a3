"""shardwise.net: typed frames over TCP, one authenticated connection per pair of nodes.

* ``frames``: the sans-IO codec (``Codec.receive_data`` / ``next_event`` / ``send``);
* ``wire``: the message types (handshake, Raft envelope, calls), tagged and versioned;
* ``auth``: the mutual HMAC challenge-response over fresh nonces;
* ``transport``: the asyncio transport: Raft for many groups and typed calls over one
  connection per peer, reconnect with back-off, bounded queues, clean shutdown;
* ``faults``: drop, delay and cut rules for tests, switchable at run time;
* ``tls``: SSL contexts; ``loop``: uvloop when installed.

``DESIGN.md`` gives the frame format byte by byte, the handshake and every limit.
"""

from shardwise.net.faults import FaultAction, FaultInjector, FaultRule
from shardwise.net.frames import CLOSED, MAX_FRAME_BYTES, NEED_DATA, Codec, encode_frame
from shardwise.net.limits import Limits
from shardwise.net.links import Address
from shardwise.net.rpc import CallContext, RpcMethod
from shardwise.net.stats import TransportStats
from shardwise.net.timing import Backoff
from shardwise.net.transport import Transport
from shardwise.net.wire import PeerRole

__all__ = [
    "CLOSED",
    "MAX_FRAME_BYTES",
    "NEED_DATA",
    "Address",
    "Backoff",
    "CallContext",
    "Codec",
    "FaultAction",
    "FaultInjector",
    "FaultRule",
    "Limits",
    "PeerRole",
    "RpcMethod",
    "Transport",
    "TransportStats",
    "encode_frame",
]
