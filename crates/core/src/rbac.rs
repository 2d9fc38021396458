//! Role-based access control: permissions are `resource:action` strings
//! (`apps:read`, `apps:write`, `members:write`, …), roles are sets of
//! permissions, and a caller's effective rights are
//! `token scope ∩ role rights ∩ membership resource restrictions ∩ the
//! token's app restriction`.

/// The resources permissions speak of.
pub const RESOURCES: &[&str] = &[
    "apps",
    "deployments",
    "nodes",
    "volumes",
    "domains",
    "databases",
    "secrets",
    "webhooks",
    "events",
    "organizations",
    "members",
    "invitations",
    "service_accounts",
    "billing",
    "users",
    "roles",
];

/// The built-in roles, present in every organization, not editable.
pub const BUILT_IN_ROLES: &[&str] = &["owner", "admin", "developer", "viewer", "billing"];

/// Does `role` grant `resource:action`? Unknown roles grant nothing.
pub fn role_allows(role: &str, resource: &str, action: &str) -> bool {
    let read = action == "read" || action == "list";
    match role {
        "owner" | "admin" => true,
        "developer" => match resource {
            "apps" | "deployments" | "volumes" | "domains" | "databases" | "secrets"
            | "webhooks" => true,
            "nodes" | "events" | "organizations" | "members" | "invitations"
            | "service_accounts" => read,
            _ => false,
        },
        "viewer" => read && resource != "secrets" && resource != "billing",
        "billing" => match resource {
            "billing" => true,
            "organizations" | "members" | "events" => read,
            _ => false,
        },
        _ => false,
    }
}

/// Does `role` grant everything a scope entry (`apps:write`, `apps:*`,
/// `*:read`, `*:*`) names? Unparsable entries grant nothing.
pub fn role_grants_scope(role: &str, entry: &str) -> bool {
    let Some((r, a)) = entry.split_once(':') else {
        return false;
    };
    let resources: Vec<&str> = if r == "*" {
        RESOURCES.to_vec()
    } else {
        vec![r]
    };
    let actions: &[&str] = if a == "*" {
        &["read", "write", "delete"]
    } else {
        &[a]
    };
    resources
        .iter()
        .all(|res| actions.iter().all(|act| role_allows(role, res, act)))
}

/// Is `scope` (a token's list of `resource:action`) enough for
/// `resource:action`? An empty scope means "whatever the role allows".
pub fn scope_allows(scope: &[String], resource: &str, action: &str) -> bool {
    scope.is_empty()
        || scope.iter().any(|s| match s.split_once(':') {
            Some((r, a)) => {
                (r == resource || r == "*")
                    && (a == action || a == "*" || (a == "write" && action == "delete"))
            }
            None => false,
        })
}

/// Singular type name of a resource, as used in restrictions (`app:*`).
fn singular(resource: &str) -> &str {
    resource.strip_suffix('s').unwrap_or(resource)
}

/// Do a membership's `resources` restrictions (`["app:*", "node:read",
/// "app:app_123"]`) allow `resource:action` on `id`? Empty means no
/// restriction. Entries: `*`, `<type>:*` (all of that type), `<type>:<action>`
/// (that action on all of that type), `<type>:<id>` (that one resource).
pub fn restrictions_allow(
    restrictions: &[String],
    resource: &str,
    action: &str,
    id: Option<&str>,
) -> bool {
    if restrictions.is_empty() {
        return true;
    }
    let kind = singular(resource);
    restrictions.iter().any(|r| {
        if r == "*" {
            return true;
        }
        let Some((t, what)) = r.split_once(':') else {
            return false;
        };
        if t != kind && t != resource {
            return false;
        }
        what == "*"
            || what == action
            || (what == "read" && action == "list")
            || id.is_some_and(|i| i == what)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_within_roles() {
        assert!(role_grants_scope("viewer", "apps:read"));
        assert!(!role_grants_scope("viewer", "apps:write"));
        assert!(!role_grants_scope("viewer", "apps:*"));
        assert!(
            !role_grants_scope("viewer", "*:read"),
            "secrets:read is not a viewer's"
        );
        assert!(role_grants_scope("developer", "apps:*"));
        assert!(!role_grants_scope("developer", "*:*"));
        assert!(role_grants_scope("owner", "*:*"));
        assert!(!role_grants_scope("owner", "nonsense"));
    }

    #[test]
    fn roles() {
        assert!(role_allows("owner", "billing", "write"));
        assert!(role_allows("developer", "apps", "write"));
        assert!(!role_allows("developer", "members", "write"));
        assert!(role_allows("viewer", "apps", "read"));
        assert!(!role_allows("viewer", "apps", "write"));
        assert!(!role_allows("viewer", "secrets", "read"));
        assert!(role_allows("billing", "billing", "write"));
        assert!(!role_allows("billing", "apps", "read"));
        assert!(!role_allows("nobody", "apps", "read"));
    }

    #[test]
    fn scopes_and_restrictions() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(scope_allows(&[], "apps", "write"));
        assert!(scope_allows(&s(&["apps:read"]), "apps", "read"));
        assert!(!scope_allows(&s(&["apps:read"]), "apps", "write"));
        assert!(scope_allows(&s(&["apps:*"]), "apps", "write"));
        assert!(scope_allows(&s(&["*:*"]), "nodes", "write"));
        assert!(restrictions_allow(
            &s(&["app:*", "node:read"]),
            "apps",
            "write",
            Some("app_1")
        ));
        assert!(restrictions_allow(
            &s(&["app:*", "node:read"]),
            "nodes",
            "read",
            None
        ));
        assert!(!restrictions_allow(
            &s(&["app:*", "node:read"]),
            "nodes",
            "write",
            None
        ));
        assert!(restrictions_allow(
            &s(&["app:app_1"]),
            "apps",
            "write",
            Some("app_1")
        ));
        assert!(!restrictions_allow(
            &s(&["app:app_1"]),
            "apps",
            "write",
            Some("app_2")
        ));
        assert!(!restrictions_allow(
            &s(&["app:app_1"]),
            "members",
            "read",
            None
        ));
    }
}
