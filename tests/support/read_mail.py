#!/usr/bin/python3
"""Read a received e-mail with Python's own parser (independent of bkr's writer).

    read_mail.py FILE  ->  JSON {headers: [[name, decoded value], ...], header_block: raw text,
                                 body: decoded text, defects: [...]}
"""
import email
import email.policy
import json
import sys

raw = open(sys.argv[1], "rb").read()
message = email.message_from_bytes(raw, policy=email.policy.default)
head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii", "replace")
print(json.dumps({
    "headers": [[name, str(value)] for name, value in message.items()],
    "header_block": head,
    "body": message.get_content(),
    "defects": [type(d).__name__ for d in message.defects],
}))
