import pytest

from devices.sdp import SdpError, opus_fmtp, set_opus_fmtp, stethoscope_opus_params

SDP = "\r\n".join(
    [
        "v=0",
        "o=- 1 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 0",
        "a=mid:0",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=0",
        "a=rtpmap:0 PCMU/8000",
        "m=audio 9 UDP/TLS/RTP/SAVPF 109",
        "a=mid:1",
        "a=rtpmap:109 opus/48000/2",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "a=mid:2",
        "a=rtpmap:96 VP8/90000",
        "",
    ]
)


def test_merges_into_existing_fmtp_of_that_mid_only() -> None:
    out = set_opus_fmtp(SDP, "0")
    params = opus_fmtp(out, "0")
    assert params == {
        "minptime": "10",
        "useinbandfec": "1",
        "stereo": "1",
        "sprop-stereo": "1",
        "usedtx": "0",
        "maxaveragebitrate": "128000",
    }
    assert opus_fmtp(out, "1") == {}
    assert out.endswith("\r\n") and "\n" not in out.replace("\r\n", "")


def test_adds_fmtp_when_missing() -> None:
    out = set_opus_fmtp(SDP, "1", stethoscope_opus_params(96000))
    assert "a=rtpmap:109 opus/48000/2\r\na=fmtp:109 stereo=1;" in out
    assert opus_fmtp(out, "1")["maxaveragebitrate"] == "96000"
    assert set_opus_fmtp(out, "1", stethoscope_opus_params(96000)) == out  # idempotent


def test_errors_name_the_problem() -> None:
    with pytest.raises(SdpError, match="no m-line with mid '7'"):
        set_opus_fmtp(SDP, "7")
    with pytest.raises(SdpError, match="offers no Opus"):
        set_opus_fmtp(SDP, "2")
