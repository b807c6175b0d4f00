// Shared by the publish and watch pages: the two-language messages and their switch, a few
// formatters, and the WebRTC-HTTP exchange that WHIP and WHEP have in common (RFC 9725:
// POST an SDP offer, get 201 + Location + the answer; DELETE the Location to end).
// Plain ES module, no framework, nothing loaded from another site.

export const config = JSON.parse(document.getElementById('oc-config').textContent);
const LANG_STORAGE = 'origincast.lang';
const listeners = [];
let language = config.lang;

export const slug = config.slug;

// -- messages ------------------------------------------------------------------------------

export function t(key, vars = {}) {
  const table = config.messages[language] || config.messages.en;
  const text = table[key] ?? config.messages.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (whole, name) => (name in vars ? String(vars[name]) : whole));
}

export function currentLanguage() {
  return language;
}

// Re-run whenever the language changes (texts a script wrote itself: status lines).
export function onLanguageChange(fn) {
  listeners.push(fn);
}

function translateStatic() {
  for (const el of document.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll('[data-i18n-placeholder]')) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
  for (const el of document.querySelectorAll('[data-i18n-aria-label]')) {
    el.setAttribute('aria-label', t(el.dataset.i18nAriaLabel));
  }
  for (const button of document.querySelectorAll('[data-lang-switch]')) {
    button.setAttribute('aria-pressed', String(button.dataset.langSwitch === language));
  }
}

export function setLanguage(next, { remember = true } = {}) {
  if (!config.languages.includes(next)) return;
  language = next;
  document.documentElement.lang = next;
  if (remember) {
    // The cookie lets the server render the next page in this language from the start;
    // localStorage keeps it if cookies are cleared with the session.
    document.cookie = `${config.cookie}=${encodeURIComponent(next)}; Path=/; Max-Age=31536000; SameSite=Lax`;
    try {
      localStorage.setItem(LANG_STORAGE, next);
    } catch {
      // Private mode may refuse storage; the cookie still carries the choice.
    }
  }
  translateStatic();
  for (const fn of listeners) fn();
}

function storedLanguage() {
  try {
    return localStorage.getItem(LANG_STORAGE);
  } catch {
    return null;
  }
}

function cookieLanguage() {
  const found = document.cookie.split('; ').find((c) => c.startsWith(`${config.cookie}=`));
  return found ? decodeURIComponent(found.split('=')[1]) : null;
}

function navigatorLanguage() {
  for (const tag of navigator.languages || [navigator.language || '']) {
    const primary = tag.toLowerCase().split('-')[0];
    if (primary === 'zh') return 'zh-CN';
    if (primary === 'en') return 'en';
  }
  return null;
}

function initLanguage() {
  for (const button of document.querySelectorAll('[data-lang-switch]')) {
    button.addEventListener('click', () => setLanguage(button.dataset.langSwitch));
  }
  const forced = new URLSearchParams(location.search).get('lang');
  const stored = storedLanguage();
  if (!forced && stored && stored !== language) {
    // The reader chose before and the cookie is gone: keep their choice.
    setLanguage(stored);
  } else if (!forced && !stored && !cookieLanguage()) {
    // No choice yet: the server went by Accept-Language; navigator.languages is the same
    // list in most browsers, but where it differs (an in-app browser), it wins.
    const guess = navigatorLanguage();
    if (guess && guess !== language) setLanguage(guess, { remember: false });
  }
}

initLanguage();

// -- formatting ----------------------------------------------------------------------------

export function formatElapsed(ms) {
  const total = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const mm = String(m).padStart(h ? 2 : 1, '0');
  return `${h ? `${h}:` : ''}${mm}:${String(s).padStart(2, '0')}`;
}

export function formatBitrate(bps) {
  if (bps >= 1e6) return `${(bps / 1e6).toFixed(1)} Mbit/s`;
  return `${Math.round(bps / 1e3)} kbit/s`;
}

// -- WHIP / WHEP ---------------------------------------------------------------------------

// The server's error, with what the page needs to say something useful about it.
export class HttpError extends Error {
  constructor(status, detail, retryAfterS) {
    super(`HTTP ${status}${detail ? `: ${detail}` : ''}`);
    this.status = status;
    this.detail = detail;
    this.retryAfterS = retryAfterS;
  }
}

// fetch() itself failed: no network, server down, TLS refused.
export class NetworkError extends Error {}

function retryAfter(header) {
  const seconds = Number.parseInt(header || '', 10);
  return Number.isFinite(seconds) && seconds >= 0 ? seconds : null;
}

// Our server answers with every candidate in the SDP and takes no trickle, so the offer
// must carry ours too: wait for gathering to finish, or a short while (a slow STUN or an
// interface that never answers must not hold the start up; host candidates come first).
export function waitForIceGathering(pc, timeoutMs = 2500) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const finish = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === 'complete') finish();
    };
    const timer = setTimeout(finish, timeoutMs);
    pc.addEventListener('icegatheringstatechange', check);
  });
}

// POST the offer; resolves to {answer, location} on 201, throws HttpError or NetworkError.
export async function postOffer(url, sdp, headers = {}) {
  let response;
  try {
    response = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', ...headers },
      body: sdp,
      cache: 'no-store',
    });
  } catch (err) {
    throw new NetworkError(String(err));
  }
  if (response.status !== 201) {
    let detail = '';
    try {
      // WHIP and WHEP answer {"error": text}, as every endpoint of ours.
      const body = await response.json();
      detail = body.error || '';
    } catch {
      // Not JSON (a proxy's error page): the status alone will do.
    }
    throw new HttpError(response.status, detail, retryAfter(response.headers.get('Retry-After')));
  }
  const answer = await response.text();
  const header = response.headers.get('Location');
  // The Location is relative to the endpoint (RFC 9725): resolve it against the POST URL.
  const location = header ? new URL(header, new URL(url, window.location.href)).href : null;
  return { answer, location };
}

// End a session. keepalive lets the request outlive the page (pagehide, closing the tab);
// sendBeacon cannot send DELETE or an Authorization header.
export function deleteSession(url, headers = {}, { keepalive = false } = {}) {
  if (!url) return Promise.resolve();
  return fetch(url, { method: 'DELETE', headers, keepalive }).catch(() => {});
}

// The STUN/TURN servers a WHIP/WHEP endpoint announces (RFC 9725 4.6: one
// `Link: <url>; rel="ice-server"; username="…"; credential="…"` per server), read from an
// OPTIONS request before the offer, since the offer must already be made with them.
export function parseIceServers(header) {
  const servers = [];
  for (const part of (header || '').split(/,(?=\s*<)/)) {
    const url = /<([^>]+)>/.exec(part)?.[1];
    if (!url || !/;\s*rel="?ice-server"?/i.test(part)) continue;
    const param = (name) =>
      new RegExp(`;\\s*${name}="((?:[^"\\\\]|\\\\.)*)"`, 'i').exec(part)?.[1]?.replace(/\\(.)/g, '$1');
    const server = { urls: url };
    const username = param('username');
    const credential = param('credential');
    if (username !== undefined) server.username = username;
    if (credential !== undefined) server.credential = credential;
    servers.push(server);
  }
  return servers;
}

// H.264 first, constrained baseline with packetization-mode 1 before other profiles:
// that is what the relay sends viewers, so the phone's hardware encoder can do the work
// and the server's decoder gets what it decodes best. Other codecs stay as fallbacks.
export function preferH264(transceiver) {
  if (typeof transceiver.setCodecPreferences !== 'function') return;
  const rank = (c) => {
    const mime = c.mimeType.toLowerCase();
    if (mime !== 'video/h264') return /rtx|red|ulpfec|flexfec/.test(mime) ? 3 : 2;
    const fmtp = (c.sdpFmtpLine || '').toLowerCase();
    const mode1 = fmtp.includes('packetization-mode=1');
    if (mode1 && fmtp.includes('profile-level-id=42e0')) return 0;
    return mode1 ? 1 : 2;
  };
  // Browsers differ in which capability list setCodecPreferences accepts for a
  // sendonly transceiver (older ones check the receiver's): try the sender's, then that.
  for (const source of [window.RTCRtpSender, window.RTCRtpReceiver]) {
    const codecs = source?.getCapabilities?.('video')?.codecs;
    if (!codecs?.length) continue;
    try {
      transceiver.setCodecPreferences([...codecs].sort((a, b) => rank(a) - rank(b)));
      return;
    } catch {
      // Try the next list; without preferences the browser's own order is used.
    }
  }
}

export function getJson(url) {
  return fetch(url, { cache: 'no-store', headers: { Accept: 'application/json' } }).then(
    async (r) => ({ status: r.status, body: r.ok ? await r.json() : null }),
    () => ({ status: 0, body: null }),
  );
}
