// /watch/<slug>: the player. WHEP (RFC 9725 style: POST an offer, get the answer) with a
// receive-only video and audio, muted autoplay (browsers allow only that without a tap)
// and a tap-to-unmute button. It reconnects by itself, whatever goes wrong.
//
// States (body[data-state], also what the tests wait for):
//   connecting → live ⇄ waiting (no new picture for a few seconds)
//   offline (409: nobody is publishing; retried after the server's Retry-After)
//   reconnecting (the connection failed or the server could not be reached: backoff)
//   unknown (404: no such stream; checked again now and then, in case it is created)
//   unsupported (no WebRTC in this browser)
import {
  HttpError,
  deleteSession,
  onLanguageChange,
  postOffer,
  slug,
  t,
  waitForIceGathering,
} from './common.js';

const $ = (id) => document.getElementById(id);
const els = {
  video: $('player'),
  status: $('status'),
  playerStatus: $('player-status-text'),
  liveBadge: $('live-badge'),
  unmute: $('unmute'),
  title: $('title'),
  site: $('site'),
};

// What the server put in the page: the stream's title and site (null: unknown, or an
// unlisted stream opened without a valid share link), the share token to pass on, and the
// STUN/TURN servers to use.
const page = JSON.parse(document.getElementById('oc-config').textContent);
const share = page.share ? `?share=${encodeURIComponent(page.share)}` : '';
const WHEP_URL = `/whep/${encodeURIComponent(slug)}${share}`;
// Built-in streams whose title the catalogs translate (the registry keeps the English one).
const TITLE_KEYS = { demo: 'watch.demo_title' };
const STALL_WAITING_MS = 3000; // no new picture this long: say we are waiting
const STALL_RECONNECT_MS = 8000; // this long: start over (a new session starts at a keyframe)
const DISCONNECT_GRACE_MS = 4000; // "disconnected" often heals by itself
const UNKNOWN_RECHECK_S = 30;

const view = {
  state: 'connecting',
  retryAt: 0,
  title: page.stream?.title ?? null,
  site: page.stream?.site ?? null,
  builtin: Boolean(page.stream?.builtin && TITLE_KEYS[slug]),
};
let session = null; // { pc, location }
let retryTimer = null;
let disconnectTimer = null;
let attempt = 0; // failures in a row, for the backoff
const progress = { time: -1, at: 0 }; // the video's currentTime and when it last moved

// -- rendering -----------------------------------------------------------------------------

function setState(state) {
  view.state = state;
  document.body.dataset.state = state;
  render();
}

function render() {
  const s = Math.max(0, Math.ceil((view.retryAt - Date.now()) / 1000));
  const text = t(`watch.state_${view.state}`, { s, slug });
  els.status.textContent = text;
  els.playerStatus.textContent = text;
  els.liveBadge.hidden = view.state !== 'live';
  els.unmute.hidden = !(view.state === 'live' && els.video.muted);
  const title = view.builtin ? t(TITLE_KEYS[slug]) : view.title || slug;
  els.title.textContent = title;
  document.title = t('watch.page_title', { title });
  els.site.hidden = !view.site;
  els.site.textContent = view.site ? t('watch.site', { site: view.site }) : '';
}

onLanguageChange(render);

// -- the session ---------------------------------------------------------------------------

function endSession({ keepalive = false } = {}) {
  clearTimeout(disconnectTimer);
  if (!session) return;
  const { pc, location } = session;
  session = null;
  deleteSession(location, {}, { keepalive });
  pc.close();
}

function retry(state, delayS) {
  endSession();
  clearTimeout(retryTimer);
  view.retryAt = Date.now() + delayS * 1000;
  setState(state);
  retryTimer = setTimeout(connect, delayS * 1000);
}

function backoff() {
  attempt += 1;
  retry('reconnecting', Math.min(15, 2 ** (attempt - 1)));
}

async function connect() {
  clearTimeout(retryTimer);
  retryTimer = null;
  endSession();
  // The server's answer carries its reachable address and it learns ours from our first
  // packets, so STUN is rarely needed; a TURN server, for viewers whose network blocks
  // UDP, comes from the server's configuration, in the page (empty list: none, and no
  // public STUN either).
  const pc = new RTCPeerConnection({ iceServers: page.iceServers || [] });
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  const stream = new MediaStream();
  pc.addEventListener('track', (event) => stream.addTrack(event.track));
  let result;
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    result = await postOffer(WHEP_URL, pc.localDescription.sdp);
  } catch (err) {
    pc.close();
    refused(err);
    return;
  }
  session = { pc, location: result.location };
  pc.addEventListener('connectionstatechange', () => connectionChanged(pc));
  setState('connecting');
  els.video.srcObject = stream;
  try {
    await pc.setRemoteDescription({ type: 'answer', sdp: result.answer });
  } catch {
    backoff();
    return;
  }
  progress.time = -1;
  progress.at = Date.now();
  els.video.play().catch(() => {
    // Muted autoplay is allowed everywhere; a refusal here is retried on 'playing'.
  });
}

function refused(err) {
  if (err instanceof HttpError && err.status === 404) {
    retry('unknown', UNKNOWN_RECHECK_S);
  } else if (err instanceof HttpError && err.status === 409) {
    // Offline: the server says when to ask again; not counted as a failure.
    attempt = 0;
    retry('offline', Math.min(60, Math.max(1, err.retryAfterS ?? 5)));
  } else {
    backoff();
  }
}

function connectionChanged(pc) {
  if (session?.pc !== pc) return;
  clearTimeout(disconnectTimer);
  if (pc.connectionState === 'failed' || pc.connectionState === 'closed') {
    backoff();
  } else if (pc.connectionState === 'disconnected') {
    disconnectTimer = setTimeout(() => {
      if (session?.pc === pc && pc.connectionState !== 'connected') backoff();
    }, DISCONNECT_GRACE_MS);
  }
}

// A picture that stops moving while the connection still looks fine (the publisher's
// phone lost its network, the stream was ended): say so, then start over, which ends in
// "offline" if nobody publishes any more.
function watchdog() {
  render(); // countdowns
  if (!session || document.hidden) return;
  const now = Date.now();
  const time = els.video.currentTime;
  if (time !== progress.time) {
    progress.time = time;
    progress.at = now;
    if (view.state === 'waiting') setState('live');
    return;
  }
  const still = now - progress.at;
  if (view.state === 'live' && still > STALL_WAITING_MS) setState('waiting');
  if ((view.state === 'waiting' || view.state === 'connecting') && still > STALL_RECONNECT_MS) backoff();
}

// -- page set-up ---------------------------------------------------------------------------

function init() {
  if (!window.RTCPeerConnection) {
    setState('unsupported');
    return;
  }
  els.video.muted = true;
  els.video.addEventListener('playing', () => {
    if (!session) return;
    attempt = 0;
    progress.at = Date.now();
    setState('live');
  });
  els.video.addEventListener('volumechange', render);
  els.unmute.addEventListener('click', () => {
    els.video.muted = false;
    els.video.play().catch(() => {});
    render();
  });
  window.addEventListener('pagehide', () => endSession({ keepalive: true }));
  // Coming back to a tab after a long time: start over rather than wait for the watchdog.
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && session && Date.now() - progress.at > STALL_RECONNECT_MS) connect();
  });
  setInterval(watchdog, 1000);
  render();
  connect();
}

init();
