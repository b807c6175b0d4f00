"""A real RTSP camera stand-in: Debian's GStreamer RTSP server (gst-rtsp-server 1.22).

Run with Debian's system python3 and its gi bindings, not the project's venv (PyGObject
and the GStreamer typelibs come from Debian packages, see APT_PACKAGES in scripts/test.sh):

    /usr/bin/python3 tests/support/rtsp_server.py --port 8554 [--user U --password P]

Serves on 127.0.0.1 only, one mount point per case a test needs:
    /h264        640x360 30 fps H.264 (x264, a keyframe every 30 frames), no audio,
                 SPS/PPS only in the SDP (never in band)
    /h264-inband the same with SPS/PPS in band before every keyframe
    /h264-pcma   the same + G.711 A-law audio (8 kHz mono)
    /h264-aac    the same + AAC-LC audio (48 kHz stereo, voaacenc)
    /h264-opus   the same + Opus audio
    /h265        640x360 H.265 (x265): a codec the relay does not pass through
Prints one line "READY <port>" on stdout once it listens, then runs until killed.
With --user/--password every mount requires HTTP Basic authentication.
"""

from __future__ import annotations

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

# SPS/PPS only out of band (in the SDP's sprop-parameter-sets, so in PyAV's extradata), never
# in the stream: the camera that "sends them once", which a relay must repair.
VIDEO = (
    "videotestsrc is-live=true pattern=ball ! video/x-raw,width=640,height=360,framerate=30/1 "
    "! x264enc tune=zerolatency key-int-max=30 speed-preset=ultrafast option-string=repeat-headers=0 "
    "! video/x-h264,profile=constrained-baseline,stream-format=avc,alignment=au "
    "! rtph264pay name=pay0 pt=96 config-interval=0"
)
# SPS/PPS in band in front of every IDR (x264's default): must pass without duplicates.
VIDEO_INBAND = (
    "videotestsrc is-live=true ! video/x-raw,width=640,height=360,framerate=30/1 "
    "! x264enc tune=zerolatency key-int-max=30 speed-preset=ultrafast "
    "! video/x-h264,profile=constrained-baseline ! rtph264pay name=pay0 pt=96"
)
H265 = (
    "videotestsrc is-live=true ! video/x-raw,width=640,height=360,framerate=30/1 "
    "! x265enc tune=zerolatency key-int-max=30 speed-preset=ultrafast ! rtph265pay name=pay0 pt=96"
)
# A tone, so a decoded transcode has something other than silence in it.
TONE = "audiotestsrc is-live=true wave=sine freq=440 volume=0.3"
AUDIO = {
    "pcma": f"{TONE} ! audio/x-raw,rate=8000,channels=1 ! alawenc ! rtppcmapay name=pay1 pt=8",
    "aac": (
        f"{TONE} ! audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=2 "
        "! voaacenc bitrate=96000 ! aacparse ! rtpmp4gpay name=pay1 pt=97"
    ),
    "opus": (
        f"{TONE} ! audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=2 "
        "! opusenc ! rtpopuspay name=pay1 pt=98"
    ),
}
MOUNTS = {
    "/h264": VIDEO,
    "/h264-inband": VIDEO_INBAND,
    "/h264-pcma": f"{VIDEO} {AUDIO['pcma']}",
    "/h264-aac": f"{VIDEO} {AUDIO['aac']}",
    "/h264-opus": f"{VIDEO} {AUDIO['opus']}",
    "/h265": H265,
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user")
    ap.add_argument("--password")
    args = ap.parse_args()

    Gst.init(None)
    missing = [
        name
        for name in ("videotestsrc", "x264enc", "rtph264pay", "x265enc", "rtph265pay", "alawenc", "voaacenc")
        if Gst.ElementFactory.find(name) is None
    ]
    if missing:
        print(f"missing GStreamer elements: {', '.join(missing)}", file=sys.stderr, flush=True)
        return 2

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    if args.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "camera-user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password or ""), token)
        server.set_auth(auth)

    for path, launch in MOUNTS.items():
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(f"( {launch} )")
        # One pipeline per client: a reconnecting client gets a fresh encoder, as from a camera.
        factory.set_shared(False)
        if args.user:
            factory.add_role_from_structure(
                Gst.Structure.from_string(
                    "camera-user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
                )[0]
            )
        server.get_mount_points().add_factory(path, factory)

    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 3
    print(f"READY {server.get_bound_port()}", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
