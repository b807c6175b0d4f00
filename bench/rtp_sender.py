#!/usr/bin/env python3
"""Relay CPU per RTP packet per viewer of the fast WHEP sender: the current one against a
baseline revision of ``stream/rtp/sender.py`` and ``packetizer.py``, in the same run, as a ratio.

    .venv/bin/python bench/rtp_sender.py                     # 50 viewers, 3 rounds of 10 s each
    .venv/bin/python bench/rtp_sender.py --viewers 20 --rounds 5 --srtp cm80
    .venv/bin/python bench/rtp_sender.py --baseline-rev HEAD   # against the committed sender

What runs is the relay's own per-viewer path with everything but the peer connection
real: the test pattern's 1280×720 frames encoded once (1.5 Mbps, 30 fps), published to
a ``LiveStream`` whose N viewer feeds are read by N ``VideoFeedTrack``s, each sent by a
``FastRtpSender`` (``use_fast_sender`` on a real ``RTCRtpSender``) whose DTLS transport is
replaced by the few attributes the sender reads: a real pylibsrtp ``Session`` (the
profile aiortc negotiates with aiortc, AES-256-GCM, by default) and a real asyncio UDP
transport per viewer. Every viewer's datagrams go to its own socket in a separate
receiver process (not measured), which counts them, so the kernel's loopback delivery
is charged to the sender as it is in the relay.

Frames are published at the source's pace (``--speed`` × 30 fps). CPU is the event-loop
thread's ``time.thread_time()`` (user + system) over the frames; a 0-viewer block
over the same frames is subtracted, and the rest is divided by the datagrams sent.
Baseline and current blocks alternate within each round, so a machine shared with
other work loads both alike; the ratio (current / baseline) is the figure to read.
The machine's load average is printed with each round. Last line of stdout: one JSON
object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from aiortc import RTCRtpSender  # noqa: E402
from aiortc.rtcdtlstransport import State as DtlsState  # noqa: E402
from aiortc.rtcrtpparameters import (  # noqa: E402
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpParameters,
)
from pylibsrtp import Policy, Session  # noqa: E402

import stream.rtp.packetizer as current_packetizer  # noqa: E402
import stream.rtp.sender as current_sender  # noqa: E402
from stream.encoder import EncoderSettings, H264Encoder  # noqa: E402
from stream.fanout import LiveStream  # noqa: E402
from stream.packets import MediaPacket  # noqa: E402
from stream.settings import StreamSettings  # noqa: E402
from stream.sources.testpattern import _Painter  # noqa: E402
from stream.whep import VideoFeedTrack  # noqa: E402

# The sender as the packetize-once commit made it (the figures of the last session).
DEFAULT_BASELINE_REV = "c233e94"
H264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90_000, payloadType=102)
EXTENSIONS = (
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
)
SRTP_PROFILES = {
    "gcm256": (Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 32 + 12),
    "gcm128": (Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 16 + 12),
    "cm80": (Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 16 + 14),
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def thread_ticks() -> tuple[float, float]:
    """This thread's user and system CPU seconds (10 ms ticks: read them over seconds)."""
    rest = Path("/proc/thread-self/stat").read_text().rpartition(")")[2].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(rest[11]) / tck, int(rest[12]) / tck


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[0]


# -- receiver process ---------------------------------------------------------------------


def receiver_main(n: int) -> None:
    """Bind n sockets, print their ports, count datagrams until stdin closes."""
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
    sel.register(sys.stdin, selectors.EVENT_READ)
    print(" ".join(str(s.getsockname()[1]) for s in socks), flush=True)
    count = 0
    buf = bytearray(65536)
    while True:
        for key, _ in sel.select(1.0):
            if key.fileobj is sys.stdin:
                line = sys.stdin.readline()
                if not line:
                    return
                print(count, flush=True)  # any line asks for the count so far
                continue
            sock: Any = key.fileobj
            while True:
                try:
                    sock.recv_into(buf)
                except BlockingIOError:
                    break
                count += 1


class Receiver:
    def __init__(self, n: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--receiver", str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.ports = [int(p) for p in self.proc.stdout.readline().split()]
        assert len(self.ports) == n, self.ports

    def count(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- senders ------------------------------------------------------------------------------


def _module_from_git(rev: str, path: str) -> types.ModuleType:
    """``path`` as of git revision ``rev`` or, if ``rev`` is a directory, the file of that
    name in it (a variant committed nowhere, e.g. to measure one change of several)."""
    if Path(rev).is_dir():
        origin = str(Path(rev) / Path(path).name)
        source = Path(origin).read_text()
    else:
        origin = f"<git {rev}:{path}>"
        source = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{rev}:{path}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    module = types.ModuleType(f"baseline_{Path(path).stem}")
    module.__file__ = origin
    exec(compile(source, origin, "exec"), module.__dict__)
    return module


def load_baseline(rev: str) -> types.SimpleNamespace:
    """``stream/rtp/sender.py`` and the ``packetizer.py`` it imports, both as of ``rev``
    (the packetizer decides the datagram sizes, and so how many GSO calls a frame takes)."""
    packetizer = _module_from_git(rev, "stream/rtp/packetizer.py")
    current = sys.modules["stream.rtp.packetizer"]
    sys.modules["stream.rtp.packetizer"] = packetizer  # what the baseline sender imports
    try:
        sender = _module_from_git(rev, "stream/rtp/sender.py")
    finally:
        sys.modules["stream.rtp.packetizer"] = current
    return types.SimpleNamespace(sender=sender, packetizer=packetizer)


class _Protocol(asyncio.DatagramProtocol):
    def error_received(self, exc: Exception) -> None:
        log(f"udp error: {exc}")


class FakeDtls:
    """What the fast sender reads on aiortc's RTCDtlsTransport and aioice's Connection,
    with a real SRTP session and a real UDP transport underneath."""

    state = "connected"

    def __init__(self, srtp: Session, transport: asyncio.DatagramTransport, addr: tuple[str, int]) -> None:
        self._state = DtlsState.CONNECTED
        self._tx_srtp = srtp
        pair = types.SimpleNamespace(protocol=types.SimpleNamespace(transport=transport), remote_addr=addr)
        self.transport = types.SimpleNamespace(_connection=types.SimpleNamespace(_nominated={1: pair}))
        self._RTCDtlsTransport__tx_bytes = 0
        self._RTCDtlsTransport__tx_packets = 0

    @property
    def tx_packets(self) -> int:
        return self._RTCDtlsTransport__tx_packets


async def make_viewer(
    module: types.ModuleType, live: LiveStream, cache: Any, port: int, srtp: str
) -> tuple[Any, FakeDtls, asyncio.DatagramTransport, asyncio.Task[None]]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Protocol, local_addr=("127.0.0.1", 0))
    profile, key_len = SRTP_PROFILES[srtp]
    policy = Policy(key=os.urandom(key_len), ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)
    dtls = FakeDtls(Session(policy), transport, ("127.0.0.1", port))
    feed = live.add_viewer()
    sender = RTCRtpSender(VideoFeedTrack(feed, lambda: None), dtls)  # type: ignore[arg-type]
    fast = module.use_fast_sender(sender, cache)
    ext = fast._RTCRtpSender__rtp_header_extensions_map
    ext.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=i + 1, uri=u) for i, u in enumerate(EXTENSIONS)
            ]
        )
    )
    fast._RTCRtpSender__mid = "0"
    task = asyncio.ensure_future(fast._run_rtp(H264))
    return fast, dtls, transport, task


def encode_frames(n: int, fps: int) -> list[MediaPacket]:
    painter = _Painter(1280, 720, busy=True)
    enc = H264Encoder(EncoderSettings(bitrate_bps=1_500_000, fps=fps, keyframe_interval_s=2.0))
    out: list[MediaPacket] = []
    now = time.time()
    i = 0
    while len(out) < n:
        out.extend(
            p
            for p in enc.encode(painter.paint(i, now + i / fps), i * (90_000 // fps), now)
            if p.kind == "video"
        )
        i += 1
    return out[:n]


def retimed(frames: list[MediaPacket], base_pts: int) -> list[MediaPacket]:
    """The same access units with pts continuing from base_pts (fresh objects, so each
    block packetizes once per frame, as a live stream does)."""
    from stream.packets import make_packet

    step = 3000
    return [
        make_packet(
            "video", bytes(f.packet), base_pts + i * step, f.packet.time_base, f.keyframe, f.wallclock
        )
        for i, f in enumerate(frames)
    ]


async def run_block(
    variant: types.SimpleNamespace | None,
    viewers: int,
    frames: list[MediaPacket],
    receiver: Receiver,
    interval: float,
    srtp: str,
) -> dict[str, float]:
    """Publish the frames to ``viewers`` senders of ``variant`` (its sender and packetizer
    modules; None: no viewers); CPU and datagrams of the block."""
    live = LiveStream("bench", StreamSettings())
    made = []
    if variant is not None:
        cache = variant.packetizer.PayloadCache()
        made = [
            await make_viewer(variant.sender, live, cache, port, srtp) for port in receiver.ports[:viewers]
        ]
    await asyncio.sleep(0.05)  # every sender's task waits on its feed (activated)
    before = receiver.count()
    loop = asyncio.get_running_loop()
    start_wall = loop.time()
    cpu0 = time.thread_time()
    ticks0 = thread_ticks()
    for i, pkt in enumerate(frames):
        live.publish(pkt)
        # Sleep to the frame's due time: the senders run in this loop meanwhile.
        await asyncio.sleep(max(0.0, start_wall + (i + 1) * interval - loop.time()))
    await asyncio.sleep(0)
    cpu = time.thread_time() - cpu0
    user, system = (b - a for a, b in zip(ticks0, thread_ticks(), strict=True))
    wall = loop.time() - start_wall
    sent = sum(d.tx_packets for _, d, _, _ in made)
    gso = sum(getattr(s, "gso_calls", 0) for s, _, _, _ in made)
    lone = sum(getattr(s, "sendto_calls", 0) for s, _, _, _ in made)
    await asyncio.sleep(0.2)
    received = receiver.count() - before
    live.close()
    for _, _, transport, task in made:
        task.cancel()
        transport.close()
    await asyncio.gather(*(t for *_, t in made), return_exceptions=True)
    return {
        "cpu_s": cpu,
        "user_s": user,
        "sys_s": system,
        "wall_s": wall,
        "datagrams": sent,
        "received": received,
        "gso_calls": gso,
        # A baseline without the counter (older senders) reports None.
        "send_calls": gso + lone if made and hasattr(made[0][0], "sendto_calls") else None,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    baseline = load_baseline(args.baseline_rev)
    current = types.SimpleNamespace(sender=current_sender, packetizer=current_packetizer)
    log(f"encoding {args.frames} frames of the test pattern (1280×720, 1.5 Mbps) …")
    frames = encode_frames(args.frames, 30)
    pkts = current_packetizer.PayloadCache()
    per_frame = statistics.mean(len(pkts.get(f).payloads) for f in frames)
    log(f"{per_frame:.2f} RTP packets per frame; {args.viewers} viewers, {args.rounds} rounds")
    receiver = Receiver(args.viewers)
    interval = 1 / (30 * args.speed)
    rows: list[dict[str, Any]] = []
    pts = 0
    try:
        # Warm-up (imports, allocator pools, the kernel's socket buffers).
        await run_block(current, args.viewers, retimed(frames[:30], pts), receiver, interval, args.srtp)
        pts += 30 * 3000
        for r in range(args.rounds):
            order = [("baseline", baseline), ("current", current)]
            if r % 2:
                order.reverse()
            row: dict[str, Any] = {"round": r + 1, "loadavg": loadavg()}
            idle = await run_block(None, 0, retimed(frames, pts), receiver, interval, args.srtp)
            pts += len(frames) * 3000
            row["idle_cpu_s"] = idle["cpu_s"]
            for name, variant in order:
                res = await run_block(
                    variant, args.viewers, retimed(frames, pts), receiver, interval, args.srtp
                )
                pts += len(frames) * 3000
                us = (res["cpu_s"] - idle["cpu_s"]) / max(1, res["datagrams"]) * 1e6
                n = max(1, res["datagrams"])
                row[name] = {
                    **res,
                    "us_per_packet_per_viewer": round(us, 3),
                    "user_us_per_packet": round((res["user_s"] - idle["user_s"]) / n * 1e6, 2),
                    "sys_us_per_packet": round((res["sys_s"] - idle["sys_s"]) / n * 1e6, 2),
                    "lost": int(res["datagrams"] - res["received"]),
                }
            row["ratio"] = round(
                row["current"]["us_per_packet_per_viewer"] / row["baseline"]["us_per_packet_per_viewer"], 3
            )
            row["loadavg_after"] = loadavg()
            b, c = row["baseline"], row["current"]
            print(
                f"round {r + 1}: baseline {b['us_per_packet_per_viewer']:.2f} µs/packet/viewer"
                f" (user {b['user_us_per_packet']:.2f} + sys {b['sys_us_per_packet']:.2f};"
                f" {b['datagrams']} datagrams, {b['gso_calls']} GSO calls of"
                f" {b['send_calls'] or 'n/a'} sends, lost {b['lost']}),"
                f" current {c['us_per_packet_per_viewer']:.2f} (user {c['user_us_per_packet']:.2f}"
                f" + sys {c['sys_us_per_packet']:.2f}; {c['datagrams']}, {c['gso_calls']} GSO of"
                f" {c['send_calls'] or 'n/a'}, lost {c['lost']}), ratio {row['ratio']:.3f};"
                f" idle {idle['cpu_s'] * 1e3:.0f} ms; loadavg {row['loadavg']} → {row['loadavg_after']}",
                flush=True,
            )
            rows.append(row)
    finally:
        receiver.close()
    base = statistics.median(r["baseline"]["us_per_packet_per_viewer"] for r in rows)
    cur = statistics.median(r["current"]["us_per_packet_per_viewer"] for r in rows)
    ratio = statistics.median(r["ratio"] for r in rows)
    pps = per_frame * 30
    print(
        f"median: baseline {base:.2f} µs/packet/viewer, current {cur:.2f}; ratio {ratio:.3f}"
        f" ({(1 - ratio) * 100:.0f} % less); at {pps:.0f} packets/s/viewer that is"
        f" {base * pps / 1e4:.3f} → {cur * pps / 1e4:.3f} % of a core per viewer (sender path only)",
        flush=True,
    )
    return {
        "viewers": args.viewers,
        "rounds": args.rounds,
        "frames": args.frames,
        "srtp": args.srtp,
        "speed": args.speed,
        "baseline_rev": args.baseline_rev,
        "packets_per_frame": round(per_frame, 3),
        "baseline_us_per_packet_per_viewer": round(base, 3),
        "current_us_per_packet_per_viewer": round(cur, 3),
        "ratio": ratio,
        "runs": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--viewers", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=300, help="frames per block (300 = 10 s at --speed 1)")
    ap.add_argument("--speed", type=float, default=1.0, help="publish at this × 30 fps")
    ap.add_argument("--srtp", choices=sorted(SRTP_PROFILES), default="gcm256")
    ap.add_argument(
        "--baseline-rev",
        default=DEFAULT_BASELINE_REV,
        help="git revision of stream/rtp/sender.py and packetizer.py to compare with, or a directory"
        " holding the two files",
    )
    ap.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.receiver is not None:
        receiver_main(args.receiver)
        return
    t0 = time.monotonic()
    result = asyncio.run(main_async(args))
    result["elapsed_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
