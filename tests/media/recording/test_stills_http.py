"""Stills REST against the real app: upload rules, who may read, the journal."""

from __future__ import annotations

import aiohttp
import cv2
import numpy as np

from devices.imaging import StillFormat, encode_still
from media.recording.still_image import header_size
from media.recording.stills_http import MAX_STILL_BYTES
from tests.devices.agent_clients import start_consultation
from tests.support import RunningServer


def image(width: int = 64, height: int = 48, fmt: StillFormat = StillFormat.PNG) -> bytes:
    rng = np.random.default_rng(1)
    return encode_still(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), fmt)


def test_header_sizes() -> None:
    assert header_size(image(64, 48), "image/png") == (64, 48)
    assert header_size(image(33, 17, StillFormat.JPEG), "image/jpeg") == (33, 17)


async def test_upload_rules_readers_and_journal(server: RunningServer) -> None:
    c = await start_consultation(server)
    other = await start_consultation(server, site="ehpad-demo", physician="dr-general", nurse="nurse-2")
    tokens = server.tokens
    agent = tokens.issue_room(c.id, "agent", role="agent", publish=["stethoscope", "dermatoscope", "otoscope"])
    url = f"{server.url}/api/consultations/{c.id}/stills"

    def headers(token: str, mime: str = "image/png", device: str | None = "dermatoscope") -> dict[str, str]:
        out = {"Authorization": f"Bearer {token}", "Content-Type": mime}
        if device:
            out["X-Device"] = device
        return out

    try:
        async with aiohttp.ClientSession() as http:
            png = image()
            async with http.post(url, data=png, headers=headers(agent)) as r:
                assert r.status == 201, await r.text()
                created = await r.json()
            assert (created["width"], created["height"], created["mime"]) == (64, 48, "image/png")
            assert created["url"] == f"/api/consultations/{c.id}/stills/{created['still_id']}"
            jpeg = image(40, 30, StillFormat.JPEG)
            async with http.post(url, data=jpeg, headers=headers(agent, "image/jpeg", "otoscope")) as r:
                assert r.status == 201 and (await r.json())["width"] == 40

            refusals = [
                (headers(agent, "image/gif"), png, 415),
                (headers(agent, "image/jpeg"), png, 415),
                (headers(agent), b"not an image at all", 415),
                (headers(agent), png[: len(png) // 2], 400),
                (headers(agent), b"", 400),
                (headers(agent, device=None), png, 400),
                (headers(agent, device="stethoscope"), png, 400),
                (headers(c.nurse_room_token), png, 403),
                (headers(tokens.issue_room(other.id, "agent", role="agent", publish=["dermatoscope"])), png, 404),
                ({"Content-Type": "image/png", "X-Device": "dermatoscope"}, png, 401),
                (headers(c.physician_access), png, 401),
            ]
            for h, body, status in refusals:
                async with http.post(url, data=body, headers=h) as r:
                    assert r.status == status, (h.get("Content-Type"), h.get("X-Device"), r.status, await r.text())
                    assert "error" in await r.json()
            async with http.post(url, data=b"\x89PNG\r\n\x1a\n" + bytes(MAX_STILL_BYTES), headers=headers(agent)) as r:
                assert r.status == 413

            # Readers: the physician, the site's nurse, an admin; everyone else: 404.
            still_url = server.url + created["url"]
            readers = {
                "physician": tokens.issue_access("physician", "dr-demo"),
                "nurse": tokens.issue_access("nurse", "nurse-9", site="cabin-demo"),
                "admin": tokens.issue_access("admin", "admin-1"),
            }
            outsiders = {
                "other physician": tokens.issue_access("physician", "dr-general"),
                "other site nurse": tokens.issue_access("nurse", "nurse-2", site="ehpad-demo"),
                "agent": tokens.issue_access("agent", "agent-cabin-demo", site="cabin-demo"),
            }
            for who, token in readers.items():
                async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
                    assert r.status == 200, who
                    assert len((await r.json())["stills"]) == 2
                async with http.get(still_url, headers={"Authorization": f"Bearer {token}"}) as r:
                    assert r.status == 200 and await r.read() == png, who
            for who, token in outsiders.items():
                for target in (url, still_url, f"{server.url}/api/consultations/nope/stills"):
                    async with http.get(target, headers={"Authorization": f"Bearer {token}"}) as r:
                        assert r.status == 404, who
            physician = {"Authorization": f"Bearer {readers['physician']}"}
            async with http.get(f"{url}/0123456789abcdef01234567", headers=physician) as r:
                assert r.status == 404
            decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
            assert decoded is not None
            assert decoded.shape == (48, 64, 3)
            async with http.get(f"{server.url}/api/consultations/{c.id}/journal", headers=physician) as r:
                acts = [e["act"] for e in (await r.json())["entries"]]
            assert acts.count("still.capture") == 2 and "still.list" in acts and "still.access" in acts
            # Once the consultation is over, no more uploads; reading goes on.
            await c.end()
            async with http.post(url, data=png, headers=headers(agent)) as r:
                assert r.status == 409
            async with http.get(still_url, headers=physician) as r:
                assert r.status == 200
    finally:
        await c.close()
        await other.close()
