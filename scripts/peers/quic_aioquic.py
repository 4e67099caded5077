"""An off-the-shelf QUIC client: aioquic against `lab serve quic` (raw QUIC, ALPN lab-quic).

Usage: quic_aioquic.py HOST PORT CA_FILE PROMPT...
Opens one connection and one bidirectional stream per prompt, writes the prompt as
<len>:<prompt>, finishes, and reads the answer to the end of the stream. Then a second
connection resumes the first's session with 0-RTT and asks the first prompt again.
Prints one JSON object: per prompt, the raw answer bytes (latin-1), and the resumed
connection's answer and whether its early data was accepted.
"""
import asyncio
import json
import sys

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamDataReceived


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.streams = {}

    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived) and event.stream_id in self.streams:
            data, done = self.streams[event.stream_id]
            data += event.data
            if event.end_stream and not done.done():
                done.set_result(bytes(data))

    def ask(self, prompt):
        sid = self._quic.get_next_available_stream_id()
        done = asyncio.get_running_loop().create_future()
        self.streams[sid] = (bytearray(), done)
        body = prompt.encode()
        self._quic.send_stream_data(sid, str(len(body)).encode() + b":" + body, end_stream=True)
        self.transmit()
        return done


async def main():
    host, port, ca, prompts = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    tickets = []
    config = QuicConfiguration(is_client=True, alpn_protocols=["lab-quic"])
    config.load_verify_locations(ca)
    config.server_name = "localhost"
    answers = []
    async with connect(
        host, port, configuration=config, create_protocol=Client, session_ticket_handler=tickets.append
    ) as client:
        futures = [client.ask(p) for p in prompts]
        for f in futures:
            answers.append((await asyncio.wait_for(f, 20)).decode("latin-1"))
        # Wait for the session ticket the server sends after the handshake.
        for _ in range(100):
            if tickets:
                break
            await asyncio.sleep(0.02)
    resumed = None
    if tickets and prompts:
        config.session_ticket = tickets[-1]
        async with connect(host, port, configuration=config, create_protocol=Client, wait_connected=False) as client:
            # Sent before the handshake completes: 0-RTT data.
            answer = (await asyncio.wait_for(client.ask(prompts[0]), 20)).decode("latin-1")
            resumed = {"answer": answer, "early_data_accepted": client._quic.tls.early_data_accepted}
    print(json.dumps({"answers": answers, "tickets": len(tickets), "resumed": resumed}))


asyncio.run(main())
