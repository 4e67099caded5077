"""An off-the-shelf WebTransport client: aioquic (draft-02 settings) against `lab serve wt`
and `lab serve wt-dgram`.

Usage: wt_aioquic.py HOST PORT PATH CA_FILE PROMPT...
Opens one session at PATH and one bidirectional stream per prompt, writes the prompt as
<len>:<prompt>, finishes, and reads the answer to the end of the stream. Prints one JSON
object: the session's HTTP status, per prompt its stream id and the raw answer bytes
(latin-1), and every datagram of the session (hex), as received in the 0.3 s after the
last answer ended.
"""
import asyncio
import json
import sys

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, FrameType, H3Connection
from aioquic.h3.events import DatagramReceived, HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic.configuration import QuicConfiguration


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.http = H3Connection(self._quic, enable_webtransport=True)
        self.session_id = None
        self.status = asyncio.get_running_loop().create_future()
        self.streams = {}
        self.datagrams = []

    def quic_event_received(self, event):
        for ev in self.http.handle_event(event):
            if isinstance(ev, HeadersReceived) and ev.stream_id == self.session_id:
                if not self.status.done():
                    self.status.set_result(int(dict(ev.headers)[b":status"]))
            elif isinstance(ev, DatagramReceived) and ev.stream_id == self.session_id:
                self.datagrams.append(ev.data.hex())
            elif isinstance(ev, WebTransportStreamDataReceived):
                data, done = self.streams[ev.stream_id]
                data += ev.data
                if ev.stream_ended and not done.done():
                    done.set_result(bytes(data))

    def open_session(self, authority, path):
        self.session_id = self._quic.get_next_available_stream_id()
        self.http.send_headers(
            self.session_id,
            [
                (b":method", b"CONNECT"),
                (b":protocol", b"webtransport"),
                (b":scheme", b"https"),
                (b":authority", authority.encode()),
                (b":path", path.encode()),
                (b"origin", b"https://localhost"),
            ],
        )
        self.transmit()

    def ask(self, prompt):
        sid = self.http.create_webtransport_stream(self.session_id, is_unidirectional=False)
        # aioquic does not mark a bidirectional stream it opened itself as WebTransport,
        # so it would parse the server's answer as HTTP/3 frames: mark it.
        with self.http._get_or_create_stream(sid) as stream:
            stream.frame_type = FrameType.WEBTRANSPORT_STREAM
            stream.session_id = self.session_id
        done = asyncio.get_running_loop().create_future()
        self.streams[sid] = (bytearray(), done)
        body = prompt.encode()
        self._quic.send_stream_data(sid, str(len(body)).encode() + b":" + body, end_stream=True)
        self.transmit()
        return sid, done


async def main():
    host, port, path, ca, prompts = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:]
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536)
    config.load_verify_locations(ca)
    config.server_name = "localhost"
    async with connect(host, port, configuration=config, create_protocol=Client) as client:
        client.open_session(f"localhost:{port}", path)
        status = await asyncio.wait_for(client.status, 10)
        answers, streams = [], []
        if status == 200:
            asked = [client.ask(p) for p in prompts]
            for sid, f in asked:
                answers.append((await asyncio.wait_for(f, 20)).decode("latin-1"))
                streams.append(sid)
            # Datagrams sent before an answer's end may still be on their way.
            await asyncio.sleep(0.3)
        print(json.dumps({"status": status, "answers": answers, "streams": streams, "datagrams": client.datagrams}))


asyncio.run(main())
