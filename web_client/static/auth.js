// Sign-in: a development link carries the access token in the URL fragment
// (#token=...); with an OpenID provider (Pro Santé Connect) the server runs the
// authorization code flow (/auth/oidc/login, PKCE) and sends the browser back with
// our access token the same way. The token lives in sessionStorage (this tab
// only) and is removed from the address bar at once. No passwords here.
import { t } from "./i18n.js";
import { ROLES } from "./vocabulary.js";

function storageKey(role) {
  return `tc.token.${role}`;
}

export class SignInError extends Error {
  constructor(kind, detail = "") {
    super(kind);
    this.kind = kind; // "expired" | "signed_out" | "wrong_role" | "unreachable"
    this.detail = detail;
  }
}

function takeTokenFromFragment(role) {
  if (!location.hash) return null;
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  // Never leave a token in the address bar, the history or a bookmark.
  history.replaceState(null, "", location.pathname + location.search);
  if (token) sessionStorage.setItem(storageKey(role), token);
  return token;
}

export async function authConfig() {
  try {
    const response = await fetch("/api/auth/config", { cache: "no-store" });
    if (response.ok) return await response.json();
  } catch (_) { /* offline: no provider */ }
  return { oidc_authorize_url: "", oidc_client_id: "", issuer: "" };
}

/** Send the person to sign in at the OpenID provider: the server keeps state, nonce and the PKCE
 * verifier, exchanges the code and comes back to this page with our access token (#token=...). */
export function redirectToProvider(_config) {
  location.assign(`/auth/oidc/login?next=${encodeURIComponent(location.pathname)}`);
}

/** Forget the token of this tab (after expiry, or on sign-out). */
export function forgetToken(role) {
  sessionStorage.removeItem(storageKey(role));
}

/** Keep a renewed token for this tab (auth.renew), so that a reload signs in with it. */
export function saveToken(role, token) {
  sessionStorage.setItem(storageKey(role), token);
}

export function currentToken(role) {
  return sessionStorage.getItem(storageKey(role));
}

/**
 * The access token and who it says we are, or a SignInError.
 * Redirects to the OpenID provider when there is no token and one is configured.
 */
export async function signIn(role) {
  const token = takeTokenFromFragment(role) || currentToken(role);
  if (!token) {
    const config = await authConfig();
    if (config.oidc_authorize_url) {
      redirectToProvider(config);
      return new Promise(() => {}); // the page is leaving
    }
    throw new SignInError("signed_out");
  }
  let response;
  try {
    response = await fetch("/api/whoami", { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
  } catch (_) {
    throw new SignInError("unreachable");
  }
  if (response.status === 401) {
    forgetToken(role);
    throw new SignInError("expired");
  }
  if (!response.ok) throw new SignInError("unreachable");
  const principal = await response.json();
  if (principal.role !== role) throw new SignInError("wrong_role", principal.role);
  return { token, principal };
}

/** Replace the page's main content with the sign-in problem, and a way out. */
export async function showSignInProblem(error, role) {
  const main = document.querySelector("main");
  const kind = error instanceof SignInError ? error.kind : "unreachable";
  const config = await authConfig();
  const box = document.createElement("section");
  box.className = "card notice";
  box.id = "signin-problem";
  box.dataset.kind = kind;
  box.setAttribute("role", "alert");
  const title = document.createElement("h2");
  title.textContent = t(`signin.${kind}.title`);
  const text = document.createElement("p");
  text.textContent = t(`signin.${kind}.text`, { role: t(`role.${error.detail || role}`) });
  box.append(title, text);
  if (kind === "wrong_role" && error.detail) {
    const link = document.createElement("a");
    link.href = `/${error.detail}`;
    link.className = "button";
    link.textContent = t("signin.open_page", { role: t(`role.${error.detail}`) });
    box.append(link);
  }
  if (config.oidc_authorize_url) {
    const again = document.createElement("button");
    again.type = "button";
    again.className = "primary";
    again.textContent = t("signin.again");
    again.addEventListener("click", () => redirectToProvider(config));
    box.append(again);
  } else {
    // The clinician is told to ask for a new link; the command an administrator runs on a
    // development server stays folded away.
    const hint = document.createElement("p");
    hint.textContent = t("signin.dev_hint");
    const details = document.createElement("details");
    details.className = "admin-only";
    const summary = document.createElement("summary");
    summary.textContent = t("signin.dev_details");
    const code = document.createElement("code");
    code.textContent = `teleconsult token access --role ${role} --sub <id>${role === ROLES.NURSE ? " --site <site>" : ""} --link`;
    details.append(summary, code);
    box.append(hint, details);
  }
  main.replaceChildren(box);
}

// A new sign-in link pasted into a tab already on this page changes only the
// fragment, which does not reload: take it as a fresh sign-in.
window.addEventListener("hashchange", () => {
  if (/(^#|&)token=/.test(location.hash)) location.reload();
});
