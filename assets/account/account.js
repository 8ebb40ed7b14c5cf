// authql's own account pages (/reset-password, /verify-email): read the token from the link
// (its fragment, or its query), take it out of the address bar, and call the mutation on
// authql's own /graphql when the form is sent. Served from authql itself, so it runs under
// the pages' Content-Security-Policy (script-src 'self').
"use strict";

(function () {
  const form = document.querySelector("form[data-flow]");
  const status = document.getElementById("status");
  if (!form || !status) return;

  function tokenFromLink() {
    const fromFragment = new URLSearchParams(window.location.hash.replace(/^#/, "")).get("token");
    const fromQuery = new URLSearchParams(window.location.search).get("token");
    return (fromFragment || fromQuery || "").trim();
  }

  const token = tokenFromLink();
  // The token is as good as a password until it is used: keep it out of the history.
  if (window.location.hash || window.location.search) {
    window.history.replaceState(null, "", window.location.pathname);
  }

  function show(message, kind) {
    status.textContent = message;
    status.className = kind;
  }

  if (!token) {
    show("This page needs the link from the mail; open the link again.", "error");
    form.querySelector("button").disabled = true;
    return;
  }

  const messages = {
    EXPIRED: "This link has expired. Ask for a new one.",
    USED: "This link was already used, or a newer one replaced it. Ask for a new one if you need it.",
    UNKNOWN: "This link is not valid. Check that you opened the whole link from the mail.",
  };

  function explain(error) {
    const extensions = error.extensions || {};
    switch (extensions.code) {
      case "INVALID_TOKEN":
        return messages[extensions.reason] || messages.UNKNOWN;
      case "BAD_USER_INPUT":
        return error.message;
      case "EMAIL_TAKEN":
        return "Another account has this address now.";
      case "RATE_LIMITED":
        return "Too many attempts; try again in " + (extensions.retryAfterSeconds || 60) + " seconds.";
      default:
        return "Something went wrong; try again in a moment.";
    }
  }

  async function call(query, variables) {
    const response = await fetch(new URL("graphql", window.location.href), {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/graphql-response+json" },
      body: JSON.stringify({ query, variables }),
      credentials: "same-origin",
    });
    return response.json();
  }

  const flows = {
    "reset-password": async function () {
      const password = form.elements.newPassword.value;
      if (password !== form.elements.confirmPassword.value) {
        show("The two passwords are not the same.", "error");
        return;
      }
      const answer = await call(
        "mutation ResetPassword($input: ResetPasswordInput!) { resetPassword(input: $input) }",
        { input: { token, newPassword: password } },
      );
      if (answer.data && answer.data.resetPassword) {
        form.hidden = true;
        show("Your password is set. You can sign in with it now; every other device was signed out.", "done");
      } else {
        show(explain((answer.errors || [{}])[0]), "error");
      }
    },
    "verify-email": async function () {
      const answer = await call(
        "mutation VerifyEmail($token: String!) { verifyEmail(token: $token) { email emailVerified } }",
        { token },
      );
      if (answer.data && answer.data.verifyEmail) {
        form.hidden = true;
        show("Thank you: " + answer.data.verifyEmail.email + " is confirmed.", "done");
      } else {
        show(explain((answer.errors || [{}])[0]), "error");
      }
    },
  };

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      await flows[form.dataset.flow]();
    } catch (_) {
      show("authql cannot be reached; try again in a moment.", "error");
    } finally {
      button.disabled = false;
    }
  });
})();
