"""Media at rest: RTP depacketizing, recording without transcoding, encrypted storage."""
