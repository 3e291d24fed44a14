// What every signed-in page does: translate, sign in, open the signalling
// socket, show its state (banner on a drop, resume by itself), and the
// "session expired" screen when the token is refused.
import { $, announce } from "./dom.js";
import { t, translate, mountLanguageSwitch, onLanguageChange } from "./i18n.js";
import { signIn, showSignInProblem, SignInError, forgetToken, saveToken } from "./auth.js";
import { Signalling } from "./signalling.js";
import { RoomTracker } from "./call.js";

export function startChrome() {
  translate();
  const button = $("#lang-switch");
  if (button) mountLanguageSwitch(button);
}

function showBanner(kind, key, params) {
  const banner = $("#banner");
  banner.hidden = false;
  banner.dataset.kind = kind;
  banner.dataset.key = key;
  banner.textContent = t(key, params);
}

function hideBanner() {
  const banner = $("#banner");
  banner.hidden = true;
  banner.dataset.kind = "";
  banner.dataset.key = "";
}

/** Sign in as ``role`` and connect; returns {token, principal, signalling} or null (problem shown). */
export async function startPage(role) {
  startChrome();
  let session;
  try {
    session = await signIn(role);
  } catch (error) {
    await showSignInProblem(error, role);
    return null;
  }
  const { token, principal } = session;
  $("#who").textContent = principal.name || principal.sub;
  const signalling = new Signalling(token);
  const connState = $("#conn-state");
  let everOpen = false;
  let reconnectedTimer = null;
  const renderState = () => {
    connState.dataset.state = signalling.state;
    connState.textContent = t(`conn.${signalling.state}`);
  };
  signalling.addEventListener("connection", (event) => {
    renderState();
    const state = event.detail.state;
    if (state === "reconnecting" && everOpen) {
      clearTimeout(reconnectedTimer);
      showBanner("warn", "conn.banner.lost");
    } else if (state === "reconnecting") {
      showBanner("warn", "conn.banner.unreachable");
    } else if (state === "open") {
      if (everOpen && $("#banner").dataset.kind === "warn") {
        showBanner("ok", "conn.banner.back");
        announce(t("conn.banner.back"));
        reconnectedTimer = setTimeout(hideBanner, 4000);
      } else if ($("#banner").dataset.key === "conn.banner.unreachable") {
        hideBanner();
      }
      everOpen = true;
    }
  });
  onLanguageChange(() => {
    renderState();
    const banner = $("#banner");
    if (!banner.hidden && banner.dataset.key) banner.textContent = t(banner.dataset.key);
  });
  signalling.addEventListener("auth-failed", () => {
    forgetToken(role);
    signalling.close();
    document.dispatchEvent(new CustomEvent("tc-signed-out"));
    showSignInProblem(new SignInError("expired"), role);
    hideBanner();
  });
  // Before the token expires the server mints a fresh one (auth.renew, up to the session's
  // maximum age); only when it refuses does the page warn that the session ends.
  let renewing = false;
  signalling.on("auth.expiring", async (message) => {
    if (renewing) return;
    renewing = true;
    try {
      const reply = await signalling.request("auth.renew");
      signalling.token = reply.token;
      saveToken(role, reply.token);
      if ($("#banner").dataset.key === "signin.expiring") hideBanner();
      signalling.dispatchEvent(new CustomEvent("token-renewed", { detail: { expires_at: reply.token_expires_at } }));
    } catch (_) {
      showBanner("warn", "signin.expiring", { minutes: Math.max(1, Math.round(message.in_s / 60)) });
    } finally {
      renewing = false;
    }
  });
  renderState();
  // A handle for people debugging the page and for the tests (no patient data is logged).
  const rooms = new RoomTracker(signalling);
  window.teleconsult = { role, principal, signalling, rooms };
  signalling.connect().catch(() => {});
  return { token, principal, signalling, rooms };
}

/** Seconds since ``created_at`` (server Unix time), with the server's clock. */
export function waitingSeconds(signalling, since) {
  return Math.max(0, signalling.serverNow() - since);
}
