"""WebRTC origin relay: sources in (WHIP, RTSP, test pattern), encoded packets fanned out to
viewers (WHEP). Imports nothing of telemetry/ or web/."""
