//! Identity: login, lockout, MFA, token kinds, RBAC, organizations,
//! members, invitations, service accounts.

use reqwest::Method;
use serde_json::{json, Value};
use shellwego_core::plan::Plan;

use shellwego_testkit::both_backends;
use shellwego_testkit::server::{fields, problem, slug, TestServer, ADMIN_PASSWORD};

async fn login(s: &TestServer, body: Value) -> reqwest::Response {
    s.call(Method::POST, "/v1/auth/token", None, Some(body))
        .await
}

async fn json_of(r: reqwest::Response, status: u16) -> Value {
    let st = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(st, status, "{v}");
    v
}

fn without_trace(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("trace_id");
    v
}

async fn login_gives_a_working_token_and_failures_look_alike(s: TestServer) {
    let r = login(
        &s,
        json!({"email": "ADMIN@localhost", "password": ADMIN_PASSWORD, "scope": ["events:read"]}),
    )
    .await;
    let t = json_of(r, 200).await;
    assert!(t["token"].as_str().unwrap().starts_with("pat_"));
    assert_eq!(t["type"], "personal_access_token");
    assert_eq!(t["scope"], json!(["events:read"]));
    assert!(t["expires_at"].is_string());
    assert_eq!(t["permissions"]["actions"], json!(["read"]));
    let tok = t["token"].as_str().unwrap();
    assert_eq!(s.get_as(tok, "/v1/events").await.0, 200);
    // Scope is enforced: this token may read events, not nodes.
    let p = problem(s.call(Method::GET, "/v1/nodes", Some(tok), None).await, 403).await;
    assert_eq!(slug(&p), "insufficient-permissions");

    let wrong = problem(
        login(
            &s,
            json!({"email": "admin@localhost", "password": "not the password"}),
        )
        .await,
        401,
    )
    .await;
    let unknown = problem(
        login(
            &s,
            json!({"email": "nobody@localhost", "password": "not the password"}),
        )
        .await,
        401,
    )
    .await;
    assert_eq!(
        without_trace(wrong),
        without_trace(unknown),
        "wrong password and unknown email must look the same"
    );
    let (_, ev) = s.get("/v1/events?filter[type]=user.login_failed").await;
    assert_eq!(
        ev["pagination"]["total"], 1,
        "the known user's failure is in its org's audit log"
    );
    let (_, ev) = s.get("/v1/events?filter[type]=user.login").await;
    assert_eq!(ev["pagination"]["total"], 1);
    assert_eq!(ev["data"][0]["actor"]["ip"], "127.0.0.1");
}

async fn the_sixth_wrong_password_locks_the_account(s: TestServer) {
    for _ in 0..5 {
        problem(
            login(
                &s,
                json!({"email": "admin@localhost", "password": "wrong-password"}),
            )
            .await,
            401,
        )
        .await;
    }
    for pw in ["wrong-password", ADMIN_PASSWORD] {
        let r = login(&s, json!({"email": "admin@localhost", "password": pw})).await;
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry > 800 && retry <= 900, "retry after {retry}");
        problem(r, 429).await;
    }
    let (_, ev) = s.get("/v1/events?filter[type]=user.locked").await;
    assert_eq!(ev["pagination"]["total"], 1);
    assert_eq!(ev["data"][0]["severity"], "warning");
    let (_, ev) = s.get("/v1/events?filter[type]=user.login_failed").await;
    assert_eq!(ev["pagination"]["total"], 5);
}

async fn mfa_enrollment_login_and_recovery_codes(s: TestServer) {
    let r = s
        .call(Method::POST, "/v1/user/mfa", Some(&s.token), None)
        .await;
    let e = json_of(r, 200).await;
    let secret = e["secret"].as_str().unwrap().to_string();
    assert!(e["otpauth_uri"]
        .as_str()
        .unwrap()
        .starts_with("otpauth://totp/ShellWeGo:admin%40localhost"));
    // A wrong code does not enable it.
    let p = problem(
        s.call(
            Method::POST,
            "/v1/user/mfa/confirm",
            Some(&s.token),
            Some(json!({"code": "12345x"})),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(fields(&p), ["code"]);
    let code = shellwego_server::mfa::current_code_base32(&secret).unwrap();
    let c = json_of(
        s.call(
            Method::POST,
            "/v1/user/mfa/confirm",
            Some(&s.token),
            Some(json!({"code": code})),
        )
        .await,
        200,
    )
    .await;
    let recovery: Vec<String> = c["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    assert_eq!(recovery.len(), 10);
    assert_eq!(s.get("/v1/user").await.1["mfa_enabled"], true);
    // The secret is encrypted at rest.
    use sqlx::Row;
    let row = sqlx::query("SELECT mfa_secret_enc FROM users WHERE email = 'admin@localhost'")
        .fetch_one(s.store.pool())
        .await
        .unwrap();
    let stored: String = row.get("mfa_secret_enc");
    assert!(!stored.contains(&secret));

    // Without a code: 401 naming mfa_code.
    let p = problem(
        login(
            &s,
            json!({"email": "admin@localhost", "password": ADMIN_PASSWORD}),
        )
        .await,
        401,
    )
    .await;
    assert_eq!(fields(&p), ["mfa_code"]);
    assert_eq!(p["errors"][0]["code"], "required");
    // With a code: a token.
    let code = shellwego_server::mfa::current_code_base32(&secret).unwrap();
    json_of(
        login(
            &s,
            json!({"email": "admin@localhost", "password": ADMIN_PASSWORD, "mfa_code": code}),
        )
        .await,
        200,
    )
    .await;
    // The same code does not work twice.
    let p = problem(
        login(
            &s,
            json!({"email": "admin@localhost", "password": ADMIN_PASSWORD, "mfa_code": code}),
        )
        .await,
        401,
    )
    .await;
    assert_eq!(fields(&p), ["mfa_code"]);
    // A recovery code works once.
    json_of(login(&s, json!({"email": "admin@localhost", "password": ADMIN_PASSWORD, "mfa_code": recovery[0]})).await, 200).await;
    let p = problem(login(&s, json!({"email": "admin@localhost", "password": ADMIN_PASSWORD, "mfa_code": recovery[0]})).await, 401).await;
    assert_eq!(p["errors"][0]["code"], "invalid_value");
    // Disable with a recovery code.
    let r = s
        .call(
            Method::POST,
            "/v1/user/mfa/disable",
            Some(&s.token),
            Some(json!({"code": recovery[1]})),
        )
        .await;
    assert_eq!(r.status(), 204);
    json_of(
        login(
            &s,
            json!({"email": "admin@localhost", "password": ADMIN_PASSWORD}),
        )
        .await,
        200,
    )
    .await;
}

async fn temporary_rotated_and_session_tokens(s: TestServer) {
    // Each endpoint takes the token types it issues, and says which.
    for (r, accepted) in [
        (
            s.call(
                Method::POST,
                "/v1/user/tokens",
                Some(&s.token),
                Some(json!({"name": "t", "type": "session_token"})),
            )
            .await,
            "personal_access_token, temporary_token",
        ),
        (
            login(
                &s,
                json!({"email": "admin@localhost", "password": ADMIN_PASSWORD, "type": "temporary_token"}),
            )
            .await,
            "personal_access_token, session_token",
        ),
    ] {
        let p = problem(r, 400).await;
        assert_eq!(fields(&p), ["type"], "{p}");
        assert_eq!(
            p["errors"][0]["message"],
            format!("must be one of: {accepted}"),
            "{p}"
        );
    }
    // temp_: one request.
    let t = json_of(
        s.call(
            Method::POST,
            "/v1/user/tokens",
            Some(&s.token),
            Some(json!({"name": "upload", "type": "temporary_token"})),
        )
        .await,
        201,
    )
    .await;
    let temp = t["token"].as_str().unwrap();
    assert!(temp.starts_with("temp_"));
    assert_eq!(s.get_as(temp, "/v1/user").await.0, 200);
    problem(s.call(Method::GET, "/v1/user", Some(temp), None).await, 401).await;

    // pat_ rotation: the old secret stops, the new one works, same id.
    let t = json_of(
        s.call(
            Method::POST,
            "/v1/user/tokens",
            Some(&s.token),
            Some(json!({"name": "ci"})),
        )
        .await,
        201,
    )
    .await;
    let (id, old) = (t["id"].as_str().unwrap(), t["token"].as_str().unwrap());
    let r = json_of(
        s.call(
            Method::POST,
            &format!("/v1/user/tokens/{id}/rotate"),
            Some(&s.token),
            None,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(r["id"], id);
    let new = r["token"].as_str().unwrap();
    assert_ne!(new, old);
    problem(s.call(Method::GET, "/v1/user", Some(old), None).await, 401).await;
    assert_eq!(s.get_as(new, "/v1/user").await.0, 200);

    // An admin may revoke a member's token via /v1/auth/token; a stranger may not.
    let (_, _, stranger) = s.org_with_user(Plan::Free, "x@example.com").await;
    problem(
        s.call(
            Method::DELETE,
            &format!("/v1/auth/token/{id}"),
            Some(&stranger),
            None,
        )
        .await,
        404,
    )
    .await;
    assert_eq!(
        s.call(
            Method::DELETE,
            &format!("/v1/auth/token/{id}"),
            Some(&s.token),
            None
        )
        .await
        .status(),
        204
    );
    problem(s.call(Method::GET, "/v1/user", Some(new), None).await, 401).await;
    // A password change ends every other token of the user: sessions and
    // PATs alike (whoever knew the old password may have made some).
    let sess = json_of(login(&s, json!({"email": "admin@localhost", "password": ADMIN_PASSWORD, "type": "session_token"})).await, 200).await;
    let sess = sess["token"].as_str().unwrap().to_string();
    assert!(sess.starts_with("sess_"));
    let p = problem(
        s.call(Method::PATCH, "/v1/user", Some(&s.token), Some(json!({"password": {"current_password": "nope-nope-nope", "new_password": "a-new-password-1"}}))).await,
        400,
    )
    .await;
    assert_eq!(fields(&p), ["password.current_password"]);
    let u = json_of(
        s.call(Method::PATCH, "/v1/user", Some(&s.token), Some(json!({"name": "Root", "password": {"current_password": ADMIN_PASSWORD, "new_password": "a-new-password-1"}})))
            .await,
        200,
    )
    .await;
    assert_eq!(u["name"], "Root");
    problem(
        s.call(Method::GET, "/v1/user", Some(&sess), None).await,
        401,
    )
    .await;
    assert_eq!(s.get("/v1/user").await.0, 200);
    json_of(
        login(
            &s,
            json!({"email": "admin@localhost", "password": "a-new-password-1"}),
        )
        .await,
        200,
    )
    .await;
    problem(
        login(
            &s,
            json!({"email": "admin@localhost", "password": ADMIN_PASSWORD}),
        )
        .await,
        401,
    )
    .await;
}

/// Invite `email` as `role` into the admin's org and accept by creating the
/// account; returns (user id, token).
async fn member(s: &TestServer, org: &str, email: &str, role: &str) -> (String, String) {
    let inv = json_of(
        s.call(
            Method::POST,
            &format!("/v1/organizations/{org}/invitations"),
            Some(&s.token),
            Some(json!({"email": email, "role": role})),
        )
        .await,
        201,
    )
    .await;
    let tok = inv["token"].as_str().unwrap();
    let a = json_of(
        s.call(
            Method::POST,
            &format!("/v1/invitations/{tok}/accept"),
            None,
            Some(json!({"name": "M", "password": "member-password-1"})),
        )
        .await,
        200,
    )
    .await;
    (
        a["user_id"].as_str().unwrap().to_string(),
        a["token"]["token"].as_str().unwrap().to_string(),
    )
}

async fn invitations_end_to_end(s: TestServer) {
    let org = s.admin_org().await;
    let inv = json_of(
        s.call(
            Method::POST,
            &format!("/v1/organizations/{org}/invitations"),
            Some(&s.token),
            Some(json!({"email": "New@Example.com", "role": "developer", "expires_in": "2d"})),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(inv["status"], "pending");
    let secret = inv["token"].as_str().unwrap().to_string();
    assert!(secret.starts_with("inv_"));
    let (_, list) = s.get(&format!("/v1/organizations/{org}/invitations")).await;
    assert!(
        list["data"][0].get("token").is_none(),
        "the token is shown once"
    );
    // Accept without an account: name and password are needed.
    let p = problem(
        s.call(
            Method::POST,
            &format!("/v1/invitations/{secret}/accept"),
            None,
            None,
        )
        .await,
        400,
    )
    .await;
    assert_eq!(fields(&p), ["name", "password"]);
    let a = json_of(
        s.call(
            Method::POST,
            &format!("/v1/invitations/{secret}/accept"),
            None,
            Some(json!({"name": "Newbie", "password": "newbie-password"})),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(a["role"], "developer");
    let tok = a["token"]["token"].as_str().unwrap();
    let me = s.get_as(tok, "/v1/user").await.1;
    assert_eq!(me["organizations"][0]["role"], "developer");
    // Reused: 410.
    let p = problem(
        s.call(
            Method::POST,
            &format!("/v1/invitations/{secret}/accept"),
            None,
            Some(json!({"name": "X", "password": "xxxxxxxxxxxx"})),
        )
        .await,
        410,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("used"));
    // Expired: 410.
    let inv = json_of(
        s.call(
            Method::POST,
            &format!("/v1/organizations/{org}/invitations"),
            Some(&s.token),
            Some(json!({"email": "late@example.com", "role": "viewer"})),
        )
        .await,
        201,
    )
    .await;
    sqlx::query("UPDATE invitations SET expires_at = 1 WHERE id = $1")
        .bind(inv["id"].as_str().unwrap())
        .execute(s.store.pool())
        .await
        .unwrap();
    let p = problem(
        s.call(
            Method::POST,
            &format!("/v1/invitations/{}/accept", inv["token"].as_str().unwrap()),
            None,
            Some(json!({"name": "L", "password": "late-password"})),
        )
        .await,
        410,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("expired"));
    // An existing user accepts while logged in; someone else's invitation is 403.
    let (_, _, other) = s.org_with_user(Plan::Free, "existing@example.com").await;
    let inv = json_of(
        s.call(
            Method::POST,
            &format!("/v1/organizations/{org}/invitations"),
            Some(&s.token),
            Some(json!({"email": "existing@example.com", "role": "viewer"})),
        )
        .await,
        201,
    )
    .await;
    let it = inv["token"].as_str().unwrap();
    problem(
        s.call(
            Method::POST,
            &format!("/v1/invitations/{it}/accept"),
            Some(tok),
            None,
        )
        .await,
        403,
    )
    .await;
    let a = json_of(
        s.call(
            Method::POST,
            &format!("/v1/invitations/{it}/accept"),
            Some(&other),
            None,
        )
        .await,
        200,
    )
    .await;
    assert!(a.get("token").is_none());
    let (_, members) = s
        .get(&format!("/v1/organizations/{org}/members?sort=email:asc"))
        .await;
    let emails: Vec<&str> = members["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["email"].as_str().unwrap())
        .collect();
    assert_eq!(
        emails,
        ["New@Example.com", "admin@localhost", "existing@example.com"]
    );
    // The other user now reaches this org by id (with its own role there).
    assert_eq!(
        s.get_as(&other, &format!("/v1/organizations/{org}"))
            .await
            .0,
        200
    );
    let (_, ev) = s
        .get("/v1/events?filter[type]=member.invited,member.joined")
        .await;
    assert_eq!(ev["pagination"]["total"], 5);
}

async fn roles_restrict_and_the_last_owner_stays(s: TestServer) {
    let org = s.admin_org().await;
    let (viewer_id, viewer) = member(&s, &org, "viewer@example.com", "viewer").await;
    // A viewer reads, but cannot write.
    assert_eq!(s.get_as(&viewer, "/v1/events").await.0, 200);
    for (m, path, body) in [
        (
            Method::PATCH,
            format!("/v1/organizations/{org}"),
            json!({"name": "mine now"}),
        ),
        (
            Method::POST,
            format!("/v1/organizations/{org}/invitations"),
            json!({"email": "a@b.c", "role": "admin"}),
        ),
        (
            Method::PATCH,
            format!("/v1/organizations/{org}/members/{viewer_id}"),
            json!({"role": "admin"}),
        ),
        (
            Method::POST,
            format!("/v1/organizations/{org}/service-accounts"),
            json!({"name": "ci", "role": "developer"}),
        ),
    ] {
        let p = problem(
            s.call(m.clone(), &path, Some(&viewer), Some(body)).await,
            403,
        )
        .await;
        assert!(
            p["detail"].as_str().unwrap().contains("viewer"),
            "{m} {path}: {p}"
        );
    }
    // The last owner can be neither demoted nor removed.
    let admin_id = s.get("/v1/user").await.1["id"]
        .as_str()
        .unwrap()
        .to_string();
    let p = problem(
        s.call(
            Method::PATCH,
            &format!("/v1/organizations/{org}/members/{admin_id}"),
            Some(&s.token),
            Some(json!({"role": "admin"})),
        )
        .await,
        409,
    )
    .await;
    assert_eq!(slug(&p), "conflict");
    problem(
        s.call(
            Method::DELETE,
            &format!("/v1/organizations/{org}/members/{admin_id}"),
            Some(&s.token),
            None,
        )
        .await,
        409,
    )
    .await;
    // With a second owner, the first may step down.
    let r = s
        .call(
            Method::PATCH,
            &format!("/v1/organizations/{org}/members/{viewer_id}"),
            Some(&s.token),
            Some(json!({"role": "owner"})),
        )
        .await;
    assert_eq!(r.status(), 204);
    let r = s
        .call(
            Method::PATCH,
            &format!("/v1/organizations/{org}/members/{admin_id}"),
            Some(&s.token),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(r.status(), 204);
    // A removed member's token stops working.
    let (gone_id, gone) = member(&s, &org, "gone@example.com", "developer").await;
    assert_eq!(
        s.call(
            Method::DELETE,
            &format!("/v1/organizations/{org}/members/{gone_id}"),
            Some(&viewer),
            None
        )
        .await
        .status(),
        204
    );
    problem(
        s.call(Method::GET, "/v1/user", Some(&gone), None).await,
        401,
    )
    .await;
    // Restricted membership: only node reads.
    let (dev_id, dev) = member(&s, &org, "dev@example.com", "developer").await;
    let r = s
        .call(
            Method::PATCH,
            &format!("/v1/organizations/{org}/members/{dev_id}"),
            Some(&viewer),
            Some(json!({"resources": ["node:read"]})),
        )
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(s.get_as(&dev, "/v1/nodes").await.0, 200);
    problem(
        s.call(Method::GET, "/v1/events", Some(&dev), None).await,
        403,
    )
    .await;
}

async fn organizations_settings_and_mfa_enforcement(s: TestServer) {
    let org = s.admin_org().await;
    let (_, o) = s.get(&format!("/v1/organizations/{org}")).await;
    assert_eq!(o["plan"], "enterprise");
    assert_eq!(o["usage"]["members"], 1);
    assert_eq!(o["settings"]["enforce_mfa"], false);
    let p = problem(
        s.call(
            Method::PATCH,
            &format!("/v1/organizations/{org}"),
            Some(&s.token),
            Some(json!({"settings": {"audit_log_retention": "20y"}})),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(fields(&p), ["settings.audit_log_retention"]);
    // A new organization: Free, its creator the owner.
    let n = json_of(
        s.call(
            Method::POST,
            "/v1/organizations",
            Some(&s.token),
            Some(json!({"name": "Acme Corp"})),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(n["slug"], "acme-corp");
    assert_eq!(n["plan"], "free");
    let (_, mine) = s.get("/v1/organizations?sort=name:asc").await;
    assert_eq!(mine["pagination"]["total"], 2);
    let (_, me) = s.get("/v1/user").await;
    assert!(me["organizations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["id"] == n["id"] && o["role"] == "owner"));
    problem(
        s.call(
            Method::POST,
            "/v1/organizations",
            Some(&s.token),
            Some(json!({"name": "Again", "slug": "acme-corp"})),
        )
        .await,
        409,
    )
    .await;

    // Enforced MFA: a member without it may only enroll.
    let (_, dev) = member(&s, &org, "nomfa@example.com", "developer").await;
    let r = s
        .call(Method::PATCH, &format!("/v1/organizations/{org}"), Some(&s.token), Some(json!({"settings": {"enforce_mfa": true, "allowed_regions": ["fra1"], "audit_log_retention": "90d"}})))
        .await;
    let o = json_of(r, 200).await;
    assert_eq!(o["settings"]["enforce_mfa"], true);
    let p = problem(
        s.call(Method::GET, "/v1/events", Some(&dev), None).await,
        403,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("multi-factor"));
    assert_eq!(
        s.call(Method::POST, "/v1/user/mfa", Some(&dev), None)
            .await
            .status(),
        200
    );
}

async fn service_accounts_for_ci(s: TestServer) {
    let org = s.admin_org().await;
    let sa = json_of(
        s.call(
            Method::POST,
            &format!("/v1/organizations/{org}/service-accounts"),
            Some(&s.token),
            Some(json!({"name": "github-actions", "role": "developer", "expires_in": "30d"})),
        )
        .await,
        201,
    )
    .await;
    let sat = sa["token"].as_str().unwrap();
    assert!(sat.starts_with("sat_"));
    assert_eq!(s.get_as(sat, "/v1/events").await.0, 200);
    problem(
        s.call(
            Method::POST,
            &format!("/v1/organizations/{org}/invitations"),
            Some(sat),
            Some(json!({"email": "a@b.c", "role": "admin"})),
        )
        .await,
        403,
    )
    .await;
    problem(s.call(Method::GET, "/v1/user", Some(sat), None).await, 403).await;
    let (_, list) = s
        .get(&format!("/v1/organizations/{org}/service-accounts"))
        .await;
    assert_eq!(list["pagination"]["total"], 1);
    assert!(list["data"][0].get("token").is_none());
    let id = sa["id"].as_str().unwrap();
    assert_eq!(
        s.call(
            Method::DELETE,
            &format!("/v1/organizations/{org}/service-accounts/{id}"),
            Some(&s.token),
            None
        )
        .await
        .status(),
        204
    );
    problem(
        s.call(Method::GET, "/v1/events", Some(sat), None).await,
        401,
    )
    .await;
    let (_, list) = s
        .get(&format!("/v1/organizations/{org}/service-accounts"))
        .await;
    assert_eq!(list["pagination"]["total"], 0);
}

both_backends!(
    login_gives_a_working_token_and_failures_look_alike,
    the_sixth_wrong_password_locks_the_account,
    mfa_enrollment_login_and_recovery_codes,
    temporary_rotated_and_session_tokens,
    invitations_end_to_end,
    roles_restrict_and_the_last_owner_stays,
    organizations_settings_and_mfa_enforcement,
    service_accounts_for_ci,
);

async fn tokens_cannot_mint_more_than_they_can_do(s: TestServer) {
    let mint = |tok: String, body: Value| {
        let s = &s;
        async move {
            s.call(Method::POST, "/v1/user/tokens", Some(&tok), Some(body))
                .await
        }
    };
    // Without users:write a token cannot manage the account at all.
    let read_only = json_of(
        mint(
            s.token.clone(),
            json!({"name": "ro", "scope": ["events:read"]}),
        )
        .await,
        201,
    )
    .await;
    let read_only = read_only["token"].as_str().unwrap().to_string();
    problem(
        mint(
            read_only.clone(),
            json!({"name": "x", "scope": ["events:read"]}),
        )
        .await,
        403,
    )
    .await;
    problem(
        s.call(
            Method::PATCH,
            "/v1/user",
            Some(&read_only),
            Some(json!({"name": "x"})),
        )
        .await,
        403,
    )
    .await;
    // It cannot rotate the user's full token either (that would hand out its secret).
    let (_, list) = s
        .get("/v1/user/tokens?filter[name]=bootstrap admin token")
        .await;
    let full_id = list["data"][0]["id"].as_str().unwrap().to_string();
    problem(
        s.call(
            Method::POST,
            &format!("/v1/user/tokens/{full_id}/rotate"),
            Some(&read_only),
            None,
        )
        .await,
        403,
    )
    .await;

    let narrow = json_of(
        mint(
            s.token.clone(),
            json!({"name": "narrow", "scope": ["events:read", "users:write"]}),
        )
        .await,
        201,
    )
    .await;
    let narrow = narrow["token"].as_str().unwrap().to_string();
    // Asking for more than it has: 403.
    let p = problem(
        mint(
            narrow.clone(),
            json!({"name": "wide", "scope": ["nodes:read"]}),
        )
        .await,
        403,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("nodes:read"));
    problem(
        s.call(
            Method::POST,
            &format!("/v1/user/tokens/{full_id}/rotate"),
            Some(&narrow),
            None,
        )
        .await,
        403,
    )
    .await;
    // Asking for "everything" gets its own scope.
    let child = json_of(mint(narrow.clone(), json!({"name": "child"})).await, 201).await;
    assert_eq!(child["scope"], json!(["events:read", "users:write"]));
    // A temporary token mints nothing.
    let temp = json_of(
        mint(
            s.token.clone(),
            json!({"name": "t", "type": "temporary_token"}),
        )
        .await,
        201,
    )
    .await;
    problem(
        mint(
            temp["token"].as_str().unwrap().to_string(),
            json!({"name": "pat"}),
        )
        .await,
        403,
    )
    .await;
    // A service account made by a scoped token inherits that scope.
    let org = s.admin_org().await;
    let scoped = json_of(
        mint(
            s.token.clone(),
            json!({"name": "sa-maker", "scope": ["service_accounts:write", "events:read"]}),
        )
        .await,
        201,
    )
    .await;
    let sa = json_of(
        s.call(
            Method::POST,
            &format!("/v1/organizations/{org}/service-accounts"),
            Some(scoped["token"].as_str().unwrap()),
            Some(json!({"name": "bot", "role": "admin"})),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(
        sa["scope"],
        json!(["service_accounts:write", "events:read"])
    );
    problem(
        s.call(
            Method::PATCH,
            &format!("/v1/organizations/{org}"),
            Some(sa["token"].as_str().unwrap()),
            Some(json!({"name": "x"})),
        )
        .await,
        403,
    )
    .await;
}

async fn concurrent_guesses_are_all_counted(s: TestServer) {
    let mut handles = vec![];
    for _ in 0..12 {
        let (http, url) = (s.http.clone(), s.url("/v1/auth/token"));
        handles.push(tokio::spawn(async move {
            http.post(url)
                .json(&json!({"email": "admin@localhost", "password": "wrong-password"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut codes = vec![];
    for h in handles {
        codes.push(h.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 401).count(), 5, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 7, "{codes:?}");
}

async fn another_orgs_mfa_policy_and_owner_protections(s: TestServer) {
    let org = s.admin_org().await;
    // A user whose own org does not enforce MFA reaches an org that does: refused there.
    let (_, _, other) = s.org_with_user(Plan::Free, "multi@example.com").await;
    let inv = json_of(
        s.call(
            Method::POST,
            &format!("/v1/organizations/{org}/invitations"),
            Some(&s.token),
            Some(json!({"email": "multi@example.com", "role": "admin"})),
        )
        .await,
        201,
    )
    .await;
    json_of(
        s.call(
            Method::POST,
            &format!("/v1/invitations/{}/accept", inv["token"].as_str().unwrap()),
            Some(&other),
            None,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(
        s.get_as(&other, &format!("/v1/organizations/{org}/members"))
            .await
            .0,
        200
    );
    // An admin cannot touch the owner's membership, nor their own.
    let admin_id = s.get("/v1/user").await.1["id"]
        .as_str()
        .unwrap()
        .to_string();
    let other_id = s.get_as(&other, "/v1/user").await.1["id"]
        .as_str()
        .unwrap()
        .to_string();
    problem(
        s.call(
            Method::PATCH,
            &format!("/v1/organizations/{org}/members/{admin_id}"),
            Some(&other),
            Some(json!({"resources": ["node:read"]})),
        )
        .await,
        403,
    )
    .await;
    problem(
        s.call(
            Method::PATCH,
            &format!("/v1/organizations/{org}/members/{other_id}"),
            Some(&other),
            Some(json!({"resources": []})),
        )
        .await,
        403,
    )
    .await;
    let r = s
        .call(
            Method::PATCH,
            &format!("/v1/organizations/{org}"),
            Some(&s.token),
            Some(json!({"settings": {"enforce_mfa": true, "audit_log_retention": "1y"}})),
        )
        .await;
    json_of(r, 200).await;
    let p = problem(
        s.call(
            Method::GET,
            &format!("/v1/organizations/{org}/members"),
            Some(&other),
            None,
        )
        .await,
        403,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("multi-factor"));
}

both_backends!(
    tokens_cannot_mint_more_than_they_can_do,
    concurrent_guesses_are_all_counted,
    another_orgs_mfa_policy_and_owner_protections
);
