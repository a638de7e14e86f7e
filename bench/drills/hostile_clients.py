"""Hostile clients against tollgate on 127.0.0.1:18083 (admin 19093), in
front of the static tenant on 18081. Used by hostile-clients.sh; bounded in
count and time, loopback only."""

import asyncio
import json
import re
import statistics
import sys
import time
import urllib.request

OUT = sys.argv[1]
HOST, PORT = "127.0.0.1", 18083
ITEM = "/api/v2/organizations/org_acme/connections/con_saml"
PATCH = (
    f"PATCH {ITEM} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer drill\r\n"
    "Content-Type: application/json\r\nContent-Length: 24\r\nConnection: close\r\n\r\n"
    '{"show_as_button":false}'
).encode()


def metric(name):
    text = urllib.request.urlopen("http://127.0.0.1:19093/metrics", timeout=5).read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def tenant_calls():
    try:
        with open(f"{OUT}/tenant-access.log") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


async def open_from(source, payload=b""):
    reader, writer = await asyncio.open_connection(HOST, PORT, local_addr=(source, 0))
    if payload:
        writer.write(payload)
        await writer.drain()
    return reader, writer


async def normal_patch():
    started = time.monotonic()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, PORT), 10)
    writer.write(PATCH)
    await writer.drain()
    head = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return time.monotonic() - started, head.decode().strip()


async def slow_clients():
    idle, slow = [], []
    for i in range(2000):
        try:
            idle.append(await open_from(f"127.0.0.{2 + i % 8}"))
        except OSError as e:
            print(f"  idle connection {i}: {e}")
            break
    partial = (
        f"PATCH {ITEM} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer drill\r\n"
        "Content-Type: application/json\r\nContent-Length: 39\r\n\r\n{\"show"
    ).encode()
    for i in range(200):
        slow.append(await open_from(f"127.0.0.{10 + i % 2}", partial))
    print(f"1. {len(idle)} idle and {len(slow)} slow-body connections open")
    await asyncio.sleep(0.5)
    latencies, statuses = [], {}
    for _ in range(100):
        took, head = await normal_patch()
        latencies.append(took)
        statuses[head] = statuses.get(head, 0) + 1
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
    print(f"   normal PATCH x100: p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, max {latencies[-1]*1000:.1f} ms; {statuses}")
    for _, w in idle + slow:
        w.close()


async def half_sent_body():
    reader, writer = await open_from(
        "127.0.0.1",
        (
            f"PATCH {ITEM} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer drill\r\n"
            "Content-Type: application/json\r\nContent-Length: 39\r\n\r\n{\"show_a"
        ).encode(),
    )
    started = time.monotonic()
    data = await asyncio.wait_for(reader.read(), 30)
    took = time.monotonic() - started
    first = data.split(b"\r\n")[0].decode()
    print(f"2. half-sent body (7 of 39 bytes): answered {first} and closed after {took:.1f} s")
    writer.close()


async def fan_out():
    fds0 = metric("process_open_fds")
    calls0 = tenant_calls()
    orgs = [{"organization_id": f"org_{i:03d}"} for i in range(50)]
    body = json.dumps({"connection_id": "con_saml", "enabled_organizations": orgs}).encode()
    req = (
        "POST /api/v2/self-service-profiles/ssp_1/sso-ticket HTTP/1.1\r\nHost: x\r\n"
        "Authorization: Bearer drill\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    reader, writer = await asyncio.open_connection(HOST, PORT)
    writer.write(req)
    await writer.drain()
    head = (await asyncio.wait_for(reader.read(), 30)).split(b"\r\n")[0].decode()
    writer.close()
    over = json.dumps({"enabled_organizations": orgs + [{"organization_id": "org_x"}]}).encode()
    reader, writer = await asyncio.open_connection(HOST, PORT)
    writer.write(req.split(b"Content-Length")[0] + f"Content-Length: {len(over)}\r\nConnection: close\r\n\r\n".encode() + over)
    await writer.drain()
    over_head = (await asyncio.wait_for(reader.read(), 30)).split(b"\r\n")[0].decode()
    writer.close()
    await asyncio.sleep(1.5)  # the tenant's access log is flushed each second
    calls = tenant_calls() - calls0
    fds1 = metric("process_open_fds")
    await asyncio.sleep(15)
    fds2 = metric("process_open_fds")
    print(f"3. SSO ticket with 50 organizations: {head}; tenant calls {calls} (limit: elements + 2 = 52)")
    print(f"   51 organizations: {over_head}")
    print(f"   open descriptors: {fds0:.0f} before, {fds1:.0f} right after, {fds2:.0f} 15 s later (idle tenant connections close 5 to 10 s after their last use)")


async def main():
    await slow_clients()
    await half_sent_body()
    await fan_out()


asyncio.run(main())
