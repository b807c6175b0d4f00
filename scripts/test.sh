#!/usr/bin/env bash
# THE test command (README, CI). Works on a brand-new Debian 12 machine as root:
# installs what is missing, makes .venv, builds the cached TimescaleDB root, then runs
# ruff, import-linter, mypy and pytest. Extra arguments go to pytest:
#     bash scripts/test.sh -x -k storage
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian packages the tests start or call. mosquitto/postgresql-15: the servers;
# mosquitto-clients: load generators; debootstrap: the Debian 13 root with TimescaleDB;
# util-linux: setpriv (PostgreSQL refuses to run as root).
# RTSP camera stand-in (tests/support/rtsp_server.py, run by Debian's python3):
# python3-gi + gir1.2-gst-rtsp-server-1.0 (GstRtspServer); plugins-base: videotestsrc,
# audiotestsrc; -good: rtph264pay, alawenc, RTP payloaders; -bad: x265enc, voaacenc;
# -ugly: x264enc.
# WHIP publisher (tests/integration/test_whip_gstreamer.py, Debian's python3 too): -bad's
# webrtcbin, dtls, srtp; gstreamer1.0-nice (libnice ICE); GI typelibs GstWebRTC/GstSdp
# (gir1.2-gst-plugins-bad-1.0) and Nice (gir1.2-nice-0.1: keep ICE on 127.0.0.1).
# Browser end-to-end tests (tests/e2e): chromium (driven by pip's playwright, which never
# downloads a browser), fonts-wqy-microhei so the Chinese pages render as glyphs, not
# boxes, and iproute2 (`ip netns`: Chromium and the server share a loopback-only namespace).
# Shipment PDFs (tests/integration/test_shipments*.py): poppler-utils (pdftotext, pdftoppm);
# fonts-wqy-microhei is also the PDF's CJK font. zbar-tools (zbarimg) decodes the trust
# page's QR code in tests/integration/test_public_shipment.py. openssl (`openssl ts -reply`)
# is the local RFC 3161 timestamp authority of tests/integration/test_bundle_verify.py.
APT_PACKAGES=(
    mosquitto mosquitto-clients postgresql-15 debootstrap util-linux ca-certificates
    python3-gi gir1.2-gst-rtsp-server-1.0
    gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly
    gstreamer1.0-nice gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1
    chromium fonts-wqy-microhei iproute2
    poppler-utils zbar-tools openssl
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "test.sh: missing Debian packages: ${missing[*]} (run as root or install them)" >&2
        exit 1
    fi
    echo "test.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
fi

if [[ ! -x .venv/bin/python ]]; then
    python=$(command -v python3.11 || command -v python3)
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

# Build the TimescaleDB root now (once per machine, about a minute) so that no test
# times out doing it.
.venv/bin/python scripts/services.py prepare

# Run every check even if an earlier one fails, so one CI run reports all of them;
# the exit code is non-zero if any failed.
failed=()
.venv/bin/ruff check . || failed+=(ruff)
.venv/bin/lint-imports || failed+=(lint-imports)
# what it checks, and how strictly: [tool.mypy] in pyproject.toml
.venv/bin/mypy || failed+=(mypy)
if (($#)); then
    .venv/bin/pytest "$@" || failed+=(pytest)
else
    .venv/bin/pytest -m "not isolated" || failed+=(pytest)
    # Load tests that time a server in the test process (the 200 live-feed clients): in a
    # process of their own, so what earlier tests left in this one cannot skew the timing.
    .venv/bin/pytest -m isolated || failed+=(pytest-isolated)
fi

if ((${#failed[@]})); then
    echo "test.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "test.sh: all checks passed"
