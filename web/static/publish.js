// /publish/<slug>: a phone's camera to the stream over WHIP (RFC 9725).
//
// States (body[data-state], also what the tests wait for):
//   idle → camera (asking for the camera) → connecting (WHIP offer/answer, ICE, DTLS)
//   → live ⇄ reconnecting (the connection dropped: the camera stays on, the page retries
//   with backoff) → stopped (the producer pressed Stop), or error (told in plain words).
import {
  HttpError,
  NetworkError,
  deleteSession,
  formatBitrate,
  formatElapsed,
  getJson,
  onLanguageChange,
  parseIceServers,
  postOffer,
  preferH264,
  slug,
  t,
  waitForIceGathering,
} from './common.js';

const $ = (id) => document.getElementById(id);
const els = {
  preview: $('preview'),
  status: $('status'),
  stats: $('stats'),
  error: $('error'),
  key: $('key'),
  keyToggle: $('key-toggle'),
  keyForget: $('key-forget'),
  keyHint: $('key-hint'),
  camera: $('camera'),
  resolution: $('resolution'),
  start: $('start'),
  stop: $('stop'),
  liveBadge: $('live-badge'),
  viewers: $('viewers'),
  title: $('stream-title'),
};

const WHIP_URL = `/whip/${encodeURIComponent(slug)}`;
const KEY_STORAGE = `origincast.publishKey.${slug}`;
// Sizes a phone camera offers in landscape (portrait swaps them by itself), and the most
// the phone should send for each: enough for a clear picture, little enough for 4G.
const RESOLUTIONS = {
  360: { width: 640, height: 360, maxBitrate: 700_000 },
  720: { width: 1280, height: 720, maxBitrate: 1_800_000 },
  1080: { width: 1920, height: 1080, maxBitrate: 3_500_000 },
};
const DISCONNECT_GRACE_MS = 5000; // "disconnected" often heals itself (a Wi-Fi hiccup)

// What the page shows; render() turns it into text in the current language.
const view = { state: 'idle', error: null, stats: null, viewers: null };
let media = null; // the camera (and microphone) stream, kept across reconnects
let session = null; // { pc, location, key }: the current WHIP session
let broadcast = null; // { key, startedAt, attempt, retryAt, retryTimer } while going live
let statsTimer = null;
let viewersTimer = null;
let disconnectTimer = null;
let wakeLock = null;

// -- rendering -----------------------------------------------------------------------------

function setState(state) {
  view.state = state;
  document.body.dataset.state = state;
  render();
}

function showError(message) {
  // message: [key, vars] or null
  view.error = message;
  render();
}

function render() {
  const now = Date.now();
  let text;
  switch (view.state) {
    case 'live':
      text = t('publish.state_live', { elapsed: formatElapsed(now - (broadcast?.startedAt ?? now)) });
      break;
    case 'reconnecting':
      text = t('publish.state_reconnecting', {
        s: Math.max(0, Math.ceil(((broadcast?.retryAt ?? now) - now) / 1000)),
      });
      break;
    default:
      text = t(`publish.state_${view.state}`);
  }
  els.status.textContent = text;
  els.liveBadge.hidden = view.state !== 'live';
  const s = view.stats;
  els.stats.textContent =
    view.state === 'live' && s && s.width
      ? t('publish.stats', { bitrate: formatBitrate(s.bitrate), width: s.width, height: s.height, fps: s.fps })
      : '';
  els.viewers.textContent =
    view.state === 'live' && view.viewers !== null ? t('publish.viewers', { n: view.viewers }) : '';
  els.error.hidden = !view.error;
  els.error.textContent = view.error ? t(...view.error) : '';
  els.keyToggle.textContent = t(els.key.type === 'password' ? 'publish.key_show' : 'publish.key_hide');
  for (const option of els.camera.querySelectorAll('option[data-n]')) {
    option.textContent = t('publish.camera_n', { n: option.dataset.n });
  }
}

onLanguageChange(render);
setInterval(render, 1000); // the elapsed time and the retry countdown

function setRunning(running) {
  els.start.hidden = running;
  els.stop.hidden = !running;
  els.key.disabled = running;
}

// -- the publish key -----------------------------------------------------------------------

function storedKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || '';
  } catch {
    return '';
  }
}

function rememberKey(key) {
  try {
    localStorage.setItem(KEY_STORAGE, key);
  } catch {
    // Private browsing may refuse storage: the producer types it next time.
  }
}

function forgetKey() {
  try {
    localStorage.removeItem(KEY_STORAGE);
  } catch {
    // Nothing stored then.
  }
  els.key.value = '';
  els.keyHint.dataset.i18n = 'publish.key_forgotten';
  els.keyHint.textContent = t('publish.key_forgotten');
}

const auth = (key) => ({ Authorization: `Bearer ${key}` });

// The STUN/TURN servers to publish through. A TURN server's credentials go only to whoever
// holds the stream's key (RFC 9725 4.6: ICE servers on OPTIONS to authenticated clients);
// the page itself carries only servers that need none. A refused key is refused here.
const pageConfig = JSON.parse(document.getElementById('oc-config').textContent);

async function iceServersFor(key) {
  let response;
  try {
    response = await fetch(WHIP_URL, { method: 'OPTIONS', headers: auth(key), cache: 'no-store' });
  } catch (err) {
    throw new NetworkError(String(err));
  }
  if (response.status === 401 || response.status === 429) {
    let detail = '';
    try {
      detail = (await response.json()).error || '';
    } catch {
      // Not JSON: the status says enough.
    }
    const after = Number.parseInt(response.headers.get('Retry-After') || '', 10);
    throw new HttpError(response.status, detail, Number.isFinite(after) ? after : null);
  }
  const servers = parseIceServers(response.headers.get('Link'));
  return servers.length ? servers : pageConfig.iceServers || [];
}

// -- the camera ----------------------------------------------------------------------------

function facing() {
  return document.querySelector('input[name="facing"]:checked')?.value || 'environment';
}

function videoConstraints() {
  const res = RESOLUTIONS[els.resolution.value] || RESOLUTIONS[720];
  const video = {
    width: { ideal: res.width },
    height: { ideal: res.height },
    frameRate: { ideal: 30, max: 30 },
  };
  if (els.camera.value) video.deviceId = { exact: els.camera.value };
  else video.facingMode = { ideal: facing() };
  return video;
}

async function openCamera() {
  try {
    return await navigator.mediaDevices.getUserMedia({ video: videoConstraints(), audio: true });
  } catch (err) {
    // A camera without a microphone (some tablets, a desk webcam) still goes live, silent.
    if (err?.name !== 'NotFoundError') throw err;
    return navigator.mediaDevices.getUserMedia({ video: videoConstraints(), audio: false });
  }
}

function cameraError(err) {
  switch (err?.name) {
    case 'NotAllowedError':
    case 'SecurityError':
    case 'PermissionDeniedError':
      return ['error.permission'];
    case 'NotFoundError':
    case 'DevicesNotFoundError':
      return ['error.no_camera'];
    case 'NotReadableError':
    case 'TrackStartError':
    case 'AbortError':
      return ['error.camera_busy'];
    case 'OverconstrainedError':
      return ['error.constraints'];
    default:
      return ['error.camera', { detail: err?.message || String(err) }];
  }
}

function showPreview() {
  els.preview.srcObject = media;
  const track = media?.getVideoTracks()[0];
  const mode = track?.getSettings?.().facingMode || (els.camera.value ? '' : facing());
  els.preview.classList.toggle('mirrored', mode === 'user');
}

function stopCamera() {
  for (const track of media?.getTracks() || []) track.stop();
  media = null;
  els.preview.srcObject = null;
}

async function refreshCameraList() {
  if (!navigator.mediaDevices?.enumerateDevices) return;
  let devices;
  try {
    devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === 'videoinput');
  } catch {
    return;
  }
  const chosen = els.camera.value;
  for (const option of [...els.camera.options]) if (option.value) option.remove();
  devices.forEach((device, index) => {
    // Before permission is granted browsers hide labels (and sometimes ids).
    if (!device.deviceId) return;
    const option = document.createElement('option');
    option.value = device.deviceId;
    if (device.label) option.textContent = device.label;
    else option.dataset.n = String(index + 1);
    els.camera.append(option);
  });
  els.camera.value = [...els.camera.options].some((o) => o.value === chosen) ? chosen : '';
  syncFacing();
  render();
}

function syncFacing() {
  // Front/back picks a camera only when none is chosen by name.
  for (const input of document.querySelectorAll('input[name="facing"]')) input.disabled = !!els.camera.value;
}

// A new camera, lens or size while live: swap the track in place (no new session, the
// viewers keep watching). The old camera is stopped first: phones open one at a time.
async function switchCamera() {
  syncFacing();
  if (!media) return; // not started: the choice applies at Start
  const old = media.getVideoTracks()[0];
  old?.stop();
  let fresh;
  try {
    fresh = await navigator.mediaDevices.getUserMedia({ video: videoConstraints() });
  } catch (err) {
    showError(cameraError(err));
    return;
  }
  if (!media) {
    for (const track of fresh.getTracks()) track.stop();
    return;
  }
  const track = fresh.getVideoTracks()[0];
  if (old) media.removeTrack(old);
  media.addTrack(track);
  showPreview();
  showError(null);
  const sender = session?.pc.getSenders().find((s) => s.track === old || s.track?.kind === 'video');
  if (sender) {
    await sender.replaceTrack(track);
    const params = sender.getParameters();
    if (params.encodings?.length) {
      params.encodings[0].maxBitrate = (RESOLUTIONS[els.resolution.value] || RESOLUTIONS[720]).maxBitrate;
      await sender.setParameters(params).catch(() => {});
    }
  }
}

// -- going live ----------------------------------------------------------------------------

async function start() {
  showError(null);
  const key = els.key.value.trim();
  if (!key) {
    showError(['error.no_key']);
    els.key.focus();
    return;
  }
  const b = { key, startedAt: null, attempt: 0, retryAt: 0, retryTimer: null };
  broadcast = b;
  setRunning(true);
  setState('camera');
  try {
    media = await openCamera();
  } catch (err) {
    if (broadcast === b) abort(cameraError(err));
    return;
  }
  if (broadcast !== b) {
    stopCamera(); // Stop was pressed while the permission prompt was up
    return;
  }
  showPreview();
  refreshCameraList(); // labels are readable once the camera is allowed
  await connect(b);
}

async function connect(b) {
  if (broadcast !== b) return;
  b.retryTimer = null;
  setState('connecting');
  // Our server's answer carries its own reachable address, and a phone behind NAT is
  // found from its first packets (peer-reflexive), so most phones need no server; the
  // configured ones help where UDP is blocked or the NAT is strict.
  let iceServers;
  try {
    iceServers = await iceServersFor(b.key);
  } catch (err) {
    if (broadcast === b) refused(b, err);
    return;
  }
  if (broadcast !== b) return;
  const pc = new RTCPeerConnection({ iceServers });
  const res = RESOLUTIONS[els.resolution.value] || RESOLUTIONS[720];
  for (const track of media.getTracks()) {
    const init = { direction: 'sendonly', streams: [media] };
    if (track.kind === 'video') init.sendEncodings = [{ maxBitrate: res.maxBitrate }];
    const transceiver = pc.addTransceiver(track, init);
    if (track.kind === 'video') preferH264(transceiver);
  }
  let result;
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    if (broadcast !== b) throw new Error('stopped');
    result = await postOffer(WHIP_URL, pc.localDescription.sdp, auth(b.key));
  } catch (err) {
    pc.close();
    if (broadcast === b) refused(b, err);
    return;
  }
  if (broadcast !== b) {
    pc.close();
    deleteSession(result.location, auth(b.key));
    return;
  }
  rememberKey(b.key); // the server took it: worth keeping on this device
  session = { pc, location: result.location, key: b.key };
  pc.addEventListener('connectionstatechange', () => connectionChanged(b, pc));
  try {
    await pc.setRemoteDescription({ type: 'answer', sdp: result.answer });
  } catch (err) {
    abort(['error.refused', { detail: err?.message || String(err) }]);
  }
}

function refused(b, err) {
  const retrying = b.startedAt !== null; // it was live before: keep trying, say why
  if (err instanceof HttpError) {
    if (err.status === 401) return abort(['error.wrong_key']);
    if (err.status === 404) return abort(['error.unknown_stream', { slug }]);
    if (err.status === 429) return abort(['error.too_many', { s: err.retryAfterS ?? 60 }]);
    // 409 while reconnecting is usually our own old session not yet gone: retry.
    if (err.status === 409 && !retrying) return abort(['error.busy']);
    if (err.status >= 500 || retrying) return scheduleRetry(b);
    return abort(['error.refused', { detail: err.detail || err.message }]);
  }
  if (err instanceof NetworkError) return retrying ? scheduleRetry(b) : abort(['error.network']);
  return abort(['error.refused', { detail: err?.message || String(err) }]);
}

function connectionChanged(b, pc) {
  if (broadcast !== b || session?.pc !== pc) return;
  clearTimeout(disconnectTimer);
  switch (pc.connectionState) {
    case 'connected':
      b.attempt = 0;
      if (b.startedAt === null) b.startedAt = Date.now();
      showError(null);
      setState('live');
      startStats(pc);
      keepScreenOn();
      break;
    case 'disconnected':
      disconnectTimer = setTimeout(() => {
        if (broadcast === b && session?.pc === pc && pc.connectionState !== 'connected') lost(b);
      }, DISCONNECT_GRACE_MS);
      break;
    case 'failed':
    case 'closed':
      lost(b);
      break;
    default:
      break;
  }
}

function lost(b) {
  endSession();
  if (b.startedAt === null) abort(['error.connection']); // never got through: say so
  else scheduleRetry(b);
}

function scheduleRetry(b) {
  endSession();
  b.attempt += 1;
  const delayS = Math.min(30, 2 ** Math.min(b.attempt, 5));
  b.retryAt = Date.now() + delayS * 1000;
  b.retryTimer = setTimeout(() => connect(b), delayS * 1000);
  setState('reconnecting');
}

// End the WHIP session (DELETE with the key it was opened with), keep the camera.
function endSession({ keepalive = false } = {}) {
  clearInterval(statsTimer);
  clearInterval(viewersTimer);
  clearTimeout(disconnectTimer);
  statsTimer = viewersTimer = null;
  view.stats = null;
  view.viewers = null;
  if (!session) return;
  const { pc, location, key } = session;
  session = null;
  deleteSession(location, auth(key), { keepalive });
  pc.close();
}

function finish() {
  if (broadcast?.retryTimer) clearTimeout(broadcast.retryTimer);
  broadcast = null;
  endSession();
  stopCamera();
  releaseScreen();
  setRunning(false);
}

function abort(message) {
  finish();
  showError(message);
  setState('error');
}

function stop() {
  finish();
  showError(null);
  setState('stopped');
}

// -- figures while live --------------------------------------------------------------------

function startStats(pc) {
  clearInterval(statsTimer);
  let last = null;
  statsTimer = setInterval(async () => {
    if (session?.pc !== pc) return;
    let report;
    try {
      report = await pc.getStats();
    } catch {
      return;
    }
    let bytes = 0;
    let video = null;
    report.forEach((s) => {
      if (s.type !== 'outbound-rtp') return;
      bytes += (s.bytesSent || 0) + (s.headerBytesSent || 0);
      if (s.kind === 'video' && (!video || (s.frameWidth || 0) > (video.frameWidth || 0))) video = s;
    });
    const now = performance.now();
    if (last && now > last.time) {
      view.stats = {
        bitrate: ((bytes - last.bytes) * 8 * 1000) / (now - last.time),
        width: video?.frameWidth || 0,
        height: video?.frameHeight || 0,
        fps: Math.round(video?.framesPerSecond || 0),
      };
      render();
    }
    last = { bytes, time: now };
  }, 1000);

  clearInterval(viewersTimer);
  const poll = async () => {
    const { status, body } = await getJson(`/api/v1/streams/${encodeURIComponent(slug)}`);
    if (status === 200 && session?.pc === pc) {
      view.viewers = body.state?.viewers ?? null;
      render();
    }
  };
  poll();
  viewersTimer = setInterval(poll, 5000);
}

// A phone that dims and locks mid-broadcast stops its camera: keep the screen on while live.
async function keepScreenOn() {
  if (wakeLock || !navigator.wakeLock) return;
  try {
    wakeLock = await navigator.wakeLock.request('screen');
    wakeLock.addEventListener('release', () => {
      wakeLock = null;
    });
  } catch {
    // Refused (battery saver): the broadcast goes on; the screen may sleep.
  }
}

function releaseScreen() {
  wakeLock?.release().catch(() => {});
  wakeLock = null;
}

// -- page set-up ---------------------------------------------------------------------------

function checkPage() {
  // Browsers give pages the camera only on HTTPS or localhost: say so instead of failing.
  if (!window.isSecureContext) return ['error.insecure'];
  if (!navigator.mediaDevices?.getUserMedia || !window.RTCPeerConnection) return ['error.unsupported'];
  return null;
}

async function loadStream({ titleOnly = false } = {}) {
  const { status, body } = await getJson(`/api/v1/streams/${encodeURIComponent(slug)}`);
  if (status === 200) els.title.textContent = body.site ? `${body.title} · ${body.site}` : body.title;
  if (titleOnly) return;
  if (status === 404) {
    els.start.disabled = true;
    showError(['error.unknown_stream', { slug }]);
    setState('error');
  } else if (status === 200 && body.kind !== 'whip') {
    els.start.disabled = true;
    showError(['error.not_whip']);
    setState('error');
  }
  // Any other answer (network down): Start will say what is wrong when pressed.
}

function init() {
  els.key.value = storedKey();
  els.keyToggle.addEventListener('click', () => {
    els.key.type = els.key.type === 'password' ? 'text' : 'password';
    render();
  });
  els.keyForget.addEventListener('click', forgetKey);
  els.start.addEventListener('click', start);
  els.stop.addEventListener('click', stop);
  els.camera.addEventListener('change', switchCamera);
  els.resolution.addEventListener('change', switchCamera);
  for (const input of document.querySelectorAll('input[name="facing"]')) {
    input.addEventListener('change', switchCamera);
  }
  document.getElementById('settings').addEventListener('submit', (event) => {
    event.preventDefault(); // Enter in the key field starts, it does not reload the page
    if (!broadcast) start();
  });
  // Leaving the page ends the session at once, so the stream is free for the next try
  // and viewers see "offline" instead of a frozen picture.
  window.addEventListener('pagehide', () => endSession({ keepalive: true }));
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && view.state === 'live') keepScreenOn();
  });

  const problem = checkPage();
  if (problem) {
    els.start.disabled = true;
    showError(problem);
    setState('error');
    loadStream({ titleOnly: true });
    return;
  }
  refreshCameraList();
  loadStream();
  render();
}

init();
