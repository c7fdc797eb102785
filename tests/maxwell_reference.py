"""Maxwell's partition numbers, written independently of `cdc.partitioner` from the
documented algorithms, to check it against.

- Java's `String.hashCode` by its documented formula (java.lang.String javadoc):
  `s[0]*31^(n-1) + s[1]*31^(n-2) + ... + s[n-1]` over UTF-16 code units, in `int`
  arithmetic (so modulo 2^32, read as signed).
- MurmurHash3 x86 32-bit from Austin Appleby's reference (smhasher
  `MurmurHash3_x86_32`), over the UTF-8 bytes, as Maxwell's `MurmurHash3` does.
- Maxwell's `MaxwellKafkaPartitioner.kafkaPartition`: `Math.abs(hash % numPartitions)`,
  with `MURMUR_HASH_SEED = 25342`.
"""

from __future__ import annotations

MAXWELL_SEED = 25342


def _signed32(value: int) -> int:
    value %= 2**32
    return value - 2**32 if value >= 2**31 else value


def java_hash_code(text: str) -> int:
    data = text.encode("utf-16-be", "surrogatepass")
    units = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    n = len(units)
    return _signed32(sum(unit * 31 ** (n - 1 - i) for i, unit in enumerate(units)))


def _rotl32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & 0xFFFFFFFF


def _fmix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h


def murmur3_x86_32(data: bytes, seed: int) -> int:
    c1, c2 = 0xCC9E2D51, 0x1B873593
    h1 = seed & 0xFFFFFFFF
    nblocks = len(data) // 4
    for i in range(nblocks):
        k1 = int.from_bytes(data[4 * i : 4 * i + 4], "little")
        k1 = (k1 * c1) & 0xFFFFFFFF
        k1 = _rotl32(k1, 15)
        k1 = (k1 * c2) & 0xFFFFFFFF
        h1 ^= k1
        h1 = _rotl32(h1, 13)
        h1 = (h1 * 5 + 0xE6546B64) & 0xFFFFFFFF
    tail = data[4 * nblocks :]
    if tail:
        k1 = int.from_bytes(tail, "little")
        k1 = (k1 * c1) & 0xFFFFFFFF
        k1 = _rotl32(k1, 15)
        k1 = (k1 * c2) & 0xFFFFFFFF
        h1 ^= k1
    h1 ^= len(data)
    return _signed32(_fmix32(h1))


def java_abs_mod(hash_value: int, partitions: int) -> int:
    # Java's % truncates toward zero: the remainder takes the dividend's sign.
    remainder = abs(hash_value) % partitions
    return abs(-remainder if hash_value < 0 else remainder)


def maxwell_partition(text: str, partitions: int, hash_function: str) -> int:
    if hash_function == "murmur3":
        value = murmur3_x86_32(text.encode("utf-8"), MAXWELL_SEED)
    else:
        value = java_hash_code(text)
    return java_abs_mod(value, partitions)
