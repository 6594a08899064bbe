"""Server-to-client WebSocket data frames, written directly (RFC 6455 section 5.2).

wsproto builds every frame through its frame protocol object, which is right for
fragmented messages, control frames and the close handshake. A complete message
from server to client is simpler than anything else in the protocol, and the
streaming hot path sends one per token delta, so rawstream writes it here::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-------+-+-------------+-------------------------------+
    |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
    |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
    |N|V|V|V|       |S|             |   (if payload len==126/127)   |
    | |1|2|3|       |K|             |                               |
    +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +

* FIN is 1 (one frame per message), RSV1-3 are 0 (no extension is negotiated:
  permessage-deflate is never offered), the opcode is 0x1 (text) or 0x2 (binary).
* MASK is 0: "A server MUST NOT mask any frames that it sends to the client"
  (section 5.1).
* "The length of the "Payload data", in bytes: if 0-125, that is the payload
  length. If 126, the following 2 bytes interpreted as a 16-bit unsigned integer
  are the payload length. If 127, the following 8 bytes interpreted as a 64-bit
  unsigned integer [...] are the payload length." Multibyte lengths are in network
  byte order, and "the minimal number of bytes MUST be used to encode the length".

wsproto keeps no state for a complete outgoing message (only for one sent in
fragments), so a frame written here leaves wsproto's view of the connection exact;
``tests/sansio/test_wsframe.py`` checks the bytes against wsproto's.
"""

from __future__ import annotations

import struct

TEXT = 0x1
BINARY = 0x2
_FIN = 0x80


def data_frame(payload: bytes, *, binary: bool = False) -> bytes:
    """One unmasked, unfragmented text (UTF-8 ``payload``) or binary frame."""
    first = _FIN | (BINARY if binary else TEXT)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, 126, n)
    else:
        head = struct.pack("!BBQ", first, 127, n)
    return head + payload
