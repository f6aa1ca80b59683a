#!/usr/bin/env python3
"""Decrypt a bkr encrypted file (docs/format.md, format bkr-chunked-1) independently of bkr.

    decrypt_independent.py KEY_FILE ENCRYPTED_FILE [OUT]     (OUT default: standard output)

Written from docs/format.md alone, with Python's `cryptography` (Debian python3-cryptography).
Writes nothing unless the whole file authenticates. Exit 0 on success, 1 on any failure.
"""
import base64
import hashlib
import struct
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

HEADER_LEN = 27
TAG_LEN = 16


def fail(message):
    sys.stderr.write("decrypt_independent: %s\n" % message)
    sys.exit(1)


def decrypt(key, data):
    if len(data) < HEADER_LEN:
        fail("not a bkr encrypted file")
    header = data[:HEADER_LEN]
    magic, version, reserved, chunk_size, key_id, prefix = struct.unpack(">6sBBI8s7s", header)
    if magic != b"BKRENC" or version != 1 or reserved != 0 or chunk_size < 1:
        fail("not a bkr encrypted file")
    if key_id != hashlib.sha256(key).digest()[:8]:
        fail("encrypted with key %s, the key given is %s"
             % (key_id.hex(), hashlib.sha256(key).digest()[:8].hex()))
    aead = AESGCM(key)
    full = chunk_size + TAG_LEN
    out = []
    pos, i = HEADER_LEN, 0
    while True:
        chunk = data[pos:pos + full]
        final = not (len(chunk) == full and pos + full < len(data))
        if final and len(chunk) < TAG_LEN:
            fail("truncated: no final chunk")
        nonce = prefix + struct.pack(">I", i) + bytes([1 if final else 0])
        try:
            out.append(aead.decrypt(nonce, chunk, header))
        except InvalidTag:
            fail("chunk %d failed authentication" % i)
        if final:
            return b"".join(out)
        pos += full
        i += 1


def main():
    if len(sys.argv) not in (3, 4):
        fail("usage: decrypt_independent.py KEY_FILE ENCRYPTED_FILE [OUT]")
    with open(sys.argv[1], "rb") as f:
        key = base64.b64decode(f.read().strip(), validate=True)
    if len(key) != 32:
        fail("the key is not 32 bytes")
    with open(sys.argv[2], "rb") as f:
        plaintext = decrypt(key, f.read())
    if len(sys.argv) == 4:
        with open(sys.argv[3], "wb") as f:
            f.write(plaintext)
    else:
        sys.stdout.buffer.write(plaintext)


if __name__ == "__main__":
    main()
