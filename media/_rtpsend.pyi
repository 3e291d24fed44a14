"""Types of the C extension ``media/_rtpsend.c``."""

BATCH: int
DATAGRAM_MAX: int

def pack_address(host: str, port: int) -> bytes: ...
def send(fd: int, protect: int, session: int, address: bytes, packets: list[bytes],
         gso: bool) -> tuple[int, int, list[bytes], int, int, int, bool]: ...
