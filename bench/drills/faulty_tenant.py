"""A tenant that misbehaves on purpose, for bench/drills/tenant-faults.sh.

HTTP/1.1 with keep-alive on 127.0.0.1:PORT. Context reads (GET) answer
normally; a PATCH's connection id picks its fate:

  con_stall   the request is read and never answered (the socket stays open)
  con_reset   the request is read, then the connection is reset (RST)
  con_close   the request is read, then the connection is closed (FIN)
  anything    200 with the association

Usage: python3 faulty_tenant.py PORT
"""

import asyncio
import json
import socket
import struct
import sys

ASSOCIATION = json.dumps({
    "connection_id": "con_saml",
    "assign_membership_on_login": False,
    "show_as_button": True,
    "is_signup_enabled": False,
    "organization_connection_name": None,
    "organization_access_level": "readonly",
    "organization_member_access_level": "none",
    "is_enabled": True,
}).encode()
CONNECTION = json.dumps({"id": "con_saml", "name": "acme-saml", "strategy": "samlp"}).encode()
NOT_FOUND = json.dumps({"statusCode": 404, "error": "Not Found", "message": "Not Found"}).encode()


def answer(status, body):
    reason = {200: "OK", 404: "Not Found"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            path = target.split("?", 1)[0].lower()
            parts = path.strip("/").split("/")
            if method == "PATCH" and parts[-1] == "con_stall":
                await asyncio.Event().wait()  # until the client gives up
            if method == "PATCH" and parts[-1] == "con_reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            if method == "PATCH" and parts[-1] == "con_close":
                writer.close()
                return
            if len(parts) == 6 and parts[:3] == ["api", "v2", "organizations"] and parts[4] == "connections":
                writer.write(answer(200, ASSOCIATION))
            elif len(parts) == 4 and parts[:3] == ["api", "v2", "connections"]:
                writer.write(answer(200, CONNECTION))
            else:
                writer.write(answer(404, NOT_FOUND))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def main(port):
    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
