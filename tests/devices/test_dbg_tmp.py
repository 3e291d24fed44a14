import asyncio, aiohttp
from tests.sfu.clients import publish, play, FlatVideoTrack
from sfu.sdp import msids

async def test_two_videos(server):
    t = server.tokens
    room = "r1"
    pub = t.issue_room(room, "agent", role="agent", publish=["dermatoscope", "otoscope"])
    sub = t.issue_room(room, "doc", role="physician", subscribe=True)
    async with aiohttp.ClientSession() as http:
        a = await publish(http, server.url, room, pub, [FlatVideoTrack(640, 360)], sources=["dermatoscope"])
        b = await publish(http, server.url, room, pub, [FlatVideoTrack(320, 240)], sources=["otoscope"])
        await asyncio.sleep(1)
        v = await play(http, server.url, room, sub, ["video", "video"])
        print(msids(v.answer))
        for tr in v.pc.getTransceivers():
            for i in range(5):
                f = await asyncio.wait_for(tr.receiver.track.recv(), 10)
            print(tr.mid, f.width, f.height)
        for s in (a, b, v): await s.close()
