// The télé-expertise page (/expertise): one page for both sides of an asynchronous
// expert opinion (docs/expertise.md). A nurse or a physician of a site lists the site's
// cases and sends new ones (expertise_request.js); a physician also has the inbox of
// their specialties (expertise_inbox.js). The case on screen is expertise_case.js.
//
// Sign-in is the other pages' (auth.js, page.js): the token in the fragment, or the one
// this tab keeps for the nurse or the physician page (`?as=nurse|physician` says which
// when it has both). `?consultation=<id>` opens a new case pre-filled from that finished
// consultation, its stills offered; `#case=<id>` (the e-mails' link) or `?case=<id>` opens a case.
//
// Live: `expertise.updated` on the signalling socket reads the lists again, and the case
// on screen when it is the one that changed (what is being typed stays).
import { $, show, announce } from "./dom.js";
import { t, onLanguageChange } from "./i18n.js";
import { authConfig, redirectToProvider, currentToken, saveToken, showSignInProblem, SignInError } from "./auth.js";
import { startPage, startChrome } from "./page.js";
import { fetchDirectory } from "./common.js";
import { ExpertiseApi, Questionnaires, CaseView, namesOf, errorText, relabel } from "./expertise_case.js";
import { NewCaseForm, renderSentList, requesterExtras } from "./expertise_request.js";
import { renderInbox, expertExtras } from "./expertise_inbox.js";

const ROLES_HERE = ["nurse", "physician"];
const ROLE_KEY = "tc.expertise.role"; // sessionStorage: the role this tab used here last
const CASE_KEY = "tc.expertise.case"; // sessionStorage: the case a link asked for, until signed in
const POLL_MS = 60000; // the socket's events are the news; this only heals a missed one

async function whoIs(token) {
  let response;
  try {
    response = await fetch("/api/whoami", { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
  } catch (_) {
    throw new SignInError("unreachable");
  }
  if (response.status === 401) throw new SignInError("expired");
  if (!response.ok) throw new SignInError("unreachable");
  return response.json();
}

/** Which of the nurse's or the physician's sign-in this page runs with (page.js then signs in with it). */
async function pageRole(asked) {
  let fresh = null;
  if (location.hash) {
    fresh = new URLSearchParams(location.hash.slice(1)).get("token");
    // Never leave a token in the address bar, the history or a bookmark.
    history.replaceState(null, "", location.pathname + location.search);
  }
  if (fresh) {
    const principal = await whoIs(fresh);
    if (!ROLES_HERE.includes(principal.role)) throw new SignInError("wrong_role", principal.role);
    saveToken(principal.role, fresh);
    sessionStorage.setItem(ROLE_KEY, principal.role);
    return principal.role;
  }
  const order = [asked, sessionStorage.getItem(ROLE_KEY), ...ROLES_HERE].filter((r) => ROLES_HERE.includes(r));
  const role = order.find((r) => currentToken(r));
  if (role) {
    sessionStorage.setItem(ROLE_KEY, role);
    return role;
  }
  const config = await authConfig();
  if (config.oidc_authorize_url) {
    redirectToProvider(config);
    return new Promise(() => {}); // the page is leaving
  }
  throw new SignInError("signed_out");
}

async function main() {
  const params = new URLSearchParams(location.search);
  // Read before the sign-in takes the fragment away (it may hold the token too).
  // Kept in this tab across a trip to the OpenID provider, which comes back to the bare page.
  const linked = new URLSearchParams(location.hash.slice(1)).get("case") || params.get("case");
  if (linked) sessionStorage.setItem(CASE_KEY, linked);
  const asked = ROLES_HERE.includes(params.get("as")) ? params.get("as") : null;
  let role;
  try {
    role = await pageRole(asked);
  } catch (error) {
    startChrome();
    await showSignInProblem(error, asked || "nurse");
    return;
  }
  const session = await startPage(role);
  if (!session) return;
  const { token, principal, signalling } = session;
  const tokenNow = () => signalling.token || token;
  const api = new ExpertiseApi(tokenNow);
  const questionnaires = new Questionnaires(api);
  const directory = await fetchDirectory(tokenNow()).catch(() => ({ sites: [], clinicians: [] }));
  const names = namesOf(directory);
  if (!principal.name) {
    const me = names.person(principal.sub);
    if (me) $("#who").textContent = me;
  }
  const back = $("#back-link");
  back.href = `/${role}`;
  back.dataset.i18n = `expertise.back.${role}`;
  back.textContent = t(back.dataset.i18n);
  back.hidden = false;

  const consultationId = params.get("consultation");
  const isExpert = role === "physician";
  const canCreate = Boolean(principal.site) || Boolean(consultationId);
  show($("#inbox"), isExpert);
  show($("#sent"), !isExpert || canCreate);
  show($("#new-case"), canCreate);
  document.body.dataset.side = isExpert ? "expert" : "requester";

  const detail = $("#detail");
  let form = null;
  const view = new CaseView(detail, {
    api, names, questionnaires, serverNow: () => signalling.serverNow(),
    extras: (c, v, q) => (c.party === "requester" ? requesterExtras(c, v, q, { principal })
      : ["expert", "pool"].includes(c.party) ? expertExtras(c, v, q, { onTaken: refreshLists }) : []),
  });
  view.addEventListener("changed", () => refreshLists());
  view.addEventListener("render", () => renderLists());

  // -- lists -------------------------------------------------------------------------------
  let sent = [];
  let inbox = [];
  function renderLists() {
    const now = signalling.serverNow();
    const selected = view.id;
    // A physician with no site requests only from a consultation: no empty "cases of the site".
    $("#sent").hidden = isExpert && !canCreate && sent.length === 0;
    renderSentList(sent, { body: $("#sent-body"), empty: $("#sent-empty"), table: $("#sent-table"), count: $("#sent-count"),
      open: openCase, selected, now });
    if (isExpert) {
      renderInbox(inbox, { body: $("#inbox-body"), empty: $("#inbox-empty"), table: $("#inbox-table"),
        count: $("#inbox-count"), open: openCase, selected, now, names, me: principal.sub });
    }
  }
  let refreshing = null;
  async function refreshLists() {
    if (refreshing) return refreshing;
    refreshing = (async () => {
      try {
        const [s, i] = await Promise.all([api.list("sent"), isExpert ? api.list("inbox") : Promise.resolve([])]);
        sent = s;
        inbox = i;
        $("#list-error").hidden = true;
        renderLists();
      } catch (err) {
        $("#list-error").textContent = errorText(err, "expertise.error.list");
        $("#list-error").hidden = false;
      } finally {
        refreshing = null;
      }
    })();
    return refreshing;
  }

  function closeForm() {
    form?.close();
    form = null;
  }

  async function openCase(id, options = {}) {
    closeForm();
    await view.show(id, options);
  }

  async function newCase() {
    closeForm();
    view.close();
    let consultation = null;
    if (consultationId) {
      consultation = { id: consultationId, patient_ref: "", stills: [] };
      const [info, stills] = await Promise.all([
        signalling.whenOpen().then(() => signalling.request("consultation.get", { consultation_id: consultationId }))
          .catch(() => null),
        api.stills(consultationId).catch(() => []),
      ]);
      consultation.patient_ref = info?.consultation?.patient_ref || "";
      consultation.stills = stills.filter((s) => ["dermatoscope", "otoscope"].includes(s.device));
    }
    form = new NewCaseForm(detail, { api, directory, names, questionnaires, consultation, signalling });
    form.addEventListener("created", async (event) => {
      const { case: c, problems } = event.detail;
      await refreshLists();
      await openCase(c.id, { notice: problems.length ? problems : null });
    });
    await form.mount();
    window.teleconsult.expertiseForm = form;
  }
  $("#new-case").addEventListener("click", newCase);

  // -- live --------------------------------------------------------------------------------
  signalling.on("expertise.updated", (m) => {
    refreshLists();
    if (view.id === m.case_id) view.refresh();
    else if (isExpert && m.action === "submit") announce(t("expertise.new_in_inbox"));
  });
  signalling.on("expertise.escalated", (m) => {
    if (view.id === m.case_id) view.refresh();
    announce(t("expertise.escalated"));
  });
  // A physician may be offered a live consultation while here: it rings on the physician page.
  signalling.on("offer.received", () => { $("#offer-notice").hidden = false; });
  signalling.on("offer.withdrawn", () => { $("#offer-notice").hidden = true; });
  signalling.on("consultation.started", () => { $("#offer-notice").hidden = true; });
  signalling.on("ready", () => {
    refreshLists();
    view.refresh();
  });
  setInterval(refreshLists, POLL_MS);
  setInterval(renderLists, POLL_MS / 2); // "overdue" as time passes
  onLanguageChange(() => {
    renderLists();
    view.relabel();
    form?.relabel();
    relabel($("#offer-notice"));
    back.textContent = t(back.dataset.i18n);
  });

  // Another e-mail's link opened in this tab changes only the fragment: open that case.
  window.addEventListener("hashchange", () => {
    const id = new URLSearchParams(location.hash.slice(1)).get("case");
    if (!id) return;
    history.replaceState(null, "", location.pathname + location.search);
    openCase(id);
  });

  window.teleconsult.expertise = { api, view, refreshLists };
  await refreshLists();
  const linkedCase = sessionStorage.getItem(CASE_KEY);
  sessionStorage.removeItem(CASE_KEY);
  if (linkedCase) await openCase(linkedCase);
  else if (consultationId && canCreate) await newCase();
}

main();
