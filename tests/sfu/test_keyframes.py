"""Keyframe detection for VP8/H.264 payloads and the PLI rate limit."""

from __future__ import annotations

from sfu.keyframes import KeyframeRequester, h264_keyframe_start, vp8_keyframe_start


def test_vp8():
    assert vp8_keyframe_start(bytes([0x10, 0x00]))  # S=1, PID=0, P=0
    assert not vp8_keyframe_start(bytes([0x10, 0x01]))  # P=1: interframe
    assert not vp8_keyframe_start(bytes([0x00, 0x00]))  # not the start of a partition
    assert vp8_keyframe_start(bytes([0x90, 0x80, 0x81, 0x23, 0x00]))  # X, I with 15-bit picture id
    assert not vp8_keyframe_start(bytes([0x90, 0x80, 0x81, 0x23, 0x01]))
    assert vp8_keyframe_start(bytes([0x90, 0xC0, 0x05, 0x01, 0x00]))  # I (7 bit), L; T/K absent
    assert vp8_keyframe_start(bytes([0x90, 0xE0, 0x05, 0x01, 0x40, 0x00]))  # I, L, T: TID byte
    assert not vp8_keyframe_start(b"")


def test_h264():
    assert h264_keyframe_start(bytes([0x65, 0x88]))  # IDR
    assert h264_keyframe_start(bytes([0x67, 0x42]))  # SPS
    assert not h264_keyframe_start(bytes([0x41, 0x9A]))  # non-IDR slice
    stap = bytes([0x78]) + b"\x00\x02\x67\x42" + b"\x00\x02\x68\xce"
    assert h264_keyframe_start(stap)
    assert not h264_keyframe_start(bytes([0x78]) + b"\x00\x02\x06\x05")  # SEI only
    assert h264_keyframe_start(bytes([0x7C, 0x85, 0x88]))  # FU-A start of an IDR
    assert not h264_keyframe_start(bytes([0x7C, 0x05, 0x88]))  # FU-A middle
    assert not h264_keyframe_start(bytes([0x7C, 0x81, 0x88]))  # FU-A start, non-IDR
    assert not h264_keyframe_start(bytes([0x78, 0x00, 0x09, 0x67]))  # truncated STAP-A


def test_pli_rate_limit():
    r = KeyframeRequester(0.3)
    assert r.request(10.0)
    assert not r.request(10.1)
    assert not r.request(10.29)
    assert r.request(10.31)
    r.keyframe_arrived()
    assert r.request(10.32)  # a keyframe came since: a new subscriber may ask at once
    assert not r.due(10.4) and r.due(10.7)
    assert (r.sent, r.suppressed) == (3, 2)
