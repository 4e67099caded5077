"""A WebSocket client lab did not write (the `websockets` package) against `lab serve ws`.

Usage: ws_client.py URL CA_FILE PROMPT...

Sends each prompt as a text message on one connection and collects the answer: text
messages up to the empty one that ends it. Then checks the server's answers to bad
input on new connections: a binary message, and a message over 1 MiB. Prints JSON.
"""
import asyncio
import json
import ssl
import sys

import websockets


async def main(url, ca, prompts):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    out = {"answers": [], "notices": []}
    async with websockets.connect(url, ssl=ctx, max_size=None) as ws:
        for p in prompts:
            await ws.send(p)
            tokens = []
            while True:
                m = await ws.recv()
                if isinstance(m, bytes):
                    out["notices"].append(m.decode())
                    continue
                if m == "":
                    break
                tokens.append(m)
            out["answers"].append(tokens)
    # A binary message is not a prompt: the server closes this WebSocket with 1003.
    async with websockets.connect(url, ssl=ctx) as ws:
        await ws.send(b"\x00\x01")
        try:
            await ws.recv()
        except websockets.ConnectionClosed as e:
            out["binary_close"] = e.rcvd.code if e.rcvd else None
    # Over 1 MiB: closed with 1009 (message too big).
    async with websockets.connect(url, ssl=ctx, max_size=None) as ws:
        await ws.send("x" * ((1 << 20) + 1))
        try:
            await ws.recv()
        except websockets.ConnectionClosed as e:
            out["oversize_close"] = e.rcvd.code if e.rcvd else None
    print(json.dumps(out))


asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
