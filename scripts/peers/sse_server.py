"""An SSE server lab did not write (aiohttp), speaking lab's `sse` protocol, for the
bring-your-own-server test.

Usage: sse_server.py LISTEN UPSTREAM MODEL CERT KEY

POST /chat {"message": "..."} streams the upstream's tokens as `data: <token>` events,
then `data: [DONE]`. The upstream is an OpenAI-compatible server (lab's mock).
"""
import json
import ssl
import sys

from aiohttp import ClientSession, web


def event(token):
    # A token with line breaks is several data lines, so it decodes back whole.
    return "".join(f"data: {line}\n" for line in token.split("\n")) + "\n"


async def chat(request):
    body = await request.json()
    out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await out.prepare(request)
    req = {
        "model": MODEL,
        "messages": [{"role": "user", "content": body["message"]}],
        "stream": True,
    }
    async with ClientSession() as s:
        async with s.post(UPSTREAM + "/v1/chat/completions", json=req) as r:
            buf = b""
            async for chunk in r.content.iter_any():
                buf += chunk
                while b"\n\n" in buf:
                    ev, buf = buf.split(b"\n\n", 1)
                    data = ev.decode()
                    if not data.startswith("data: ") or data == "data: [DONE]":
                        continue
                    delta = json.loads(data[6:])["choices"][0]["delta"]
                    if delta.get("content"):
                        await out.write(event(delta["content"]).encode())
    await out.write(b"data: [DONE]\n\n")
    await out.write_eof()
    return out


listen, UPSTREAM, MODEL, cert, key = sys.argv[1:6]
host, port = listen.rsplit(":", 1)
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
app = web.Application()
app.router.add_post("/chat", chat)
web.run_app(app, host=host, port=int(port), ssl_context=ctx, print=None)
