#!/usr/bin/env python3
"""Shows that a server refuses a replayed digest REGISTER: the same
Authorization (same nonce and nc) twice, then nc=2 of the same nonce.
Expected: 200, then 401 (or 403), then 200. MD5, qop=auth.

usage: replay_check.py PORT USER DOMAIN PASSWORD
"""

import hashlib
import random
import re
import socket
import sys


def main():
    port, user, dom, pw = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(3)
    lp = s.getsockname()[1]
    call_id = "%x@replay-check" % random.getrandbits(64)
    md5 = lambda t: hashlib.md5(t.encode()).hexdigest()

    def send(cseq, auth=None):
        branch = "z9hG4bK%x" % random.getrandbits(48)
        m = (
            f"REGISTER sip:{dom} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{lp};branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{user}@{dom}>;tag=rc\r\nTo: <sip:{user}@{dom}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@127.0.0.1:{lp}>;expires=600\r\n"
            + (f"Authorization: {auth}\r\n" if auth else "")
            + "Content-Length: 0\r\n\r\n"
        )
        s.sendto(m.encode(), ("127.0.0.1", port))
        return s.recv(65535).decode(errors="replace")

    challenge = send(1)
    nonce = re.search(r'nonce="([^"]+)"', challenge).group(1)

    def auth(nc):
        ha1 = md5(f"{user}:{dom}:{pw}")
        ha2 = md5(f"REGISTER:sip:{dom}")
        resp = md5(f"{ha1}:{nonce}:{nc}:0a4f113b:auth:{ha2}")
        return (
            f'Digest username="{user}",realm="{dom}",nonce="{nonce}",uri="sip:{dom}",response="{resp}",'
            f'algorithm=MD5,cnonce="0a4f113b",nc={nc},qop=auth'
        )

    status = lambda r: " ".join(r.split("\r\n")[0].split(" ")[1:])
    first = auth("00000001")
    print(
        f"nc=1: {status(send(2, first))}; the same again: {status(send(3, first))}; "
        f"nc=2: {status(send(4, auth('00000002')))}"
    )


if __name__ == "__main__":
    main()
