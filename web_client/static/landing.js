import { startChrome } from "./page.js";
import { authConfig } from "./auth.js";

startChrome();
authConfig().then((config) => {
  document.getElementById("signin-sso").hidden = !config.oidc_authorize_url;
});
