"""A thin RTP send path for the relay: packetize once per stream, send per viewer.

``packetizer``: the RTP payloads of each shared ``MediaPacket``, cut once (aiortc's own
H.264 STAP-A/FU-A packetization) and cached for every viewer of the stream.
``sender``: an ``RTCRtpSender`` whose RTP loop fills a per-viewer header template and
sends each packet through SRTP and the ICE pair's datagram transport synchronously.
"""
