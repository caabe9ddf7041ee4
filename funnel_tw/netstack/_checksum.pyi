def ones_sum(data: bytes | bytearray | memoryview, start: int = 0, /) -> int: ...
def tcp_packet(
    src: bytes,
    dst: bytes,
    ident: int,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    options: bytes,
    payload: bytes | bytearray | memoryview,
    /,
) -> bytes: ...
def tcp_run(
    src: bytes,
    dst: bytes,
    ident: int,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    options: bytes,
    data: bytes | bytearray | memoryview,
    offset: int,
    size: int,
    count: int,
    /,
) -> list[bytes]: ...
def tcp4_fields(
    packet: bytes, verify: bool, /
) -> int | tuple[int, bytes, bytes, int, int, int, int, int, int, bytes, bytes] | None: ...
