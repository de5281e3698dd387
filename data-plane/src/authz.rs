//! Authorization on the inbound side: Envoy's RBAC HTTP filter, decoded into a
//! small tree and evaluated per request, and its network twin for opaque TCP
//! chains, evaluated once per connection on the caller alone.
//!
//! The controller puts a DENY filter (if any deny policy applies) and then an ALLOW
//! filter (if any allow policy applies) in front of the router; the filters run in
//! order, as in Envoy: a DENY filter denies when any of its policies matches, an
//! ALLOW filter denies when none does. Only the matchers the mesh emits are
//! supported; anything else is rejected at decode time so the xDS client NACKs it
//! instead of silently allowing (or denying) traffic it does not understand.

use envoy_types::pb::envoy::config::rbac::v3::{
    Permission as EnvoyPermission, Principal as EnvoyPrincipal, Rbac as RbacRules, permission,
    principal, rbac::Action as EnvoyAction,
};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, path_matcher, string_matcher};
use envoy_types::pb::google::protobuf::Any;
use mesh_xds::any::unpack;
use serde::Serialize;

pub use mesh_xds::authz::RBAC_FILTER;

/// What a filter does when one of its policies matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// Allow only requests some policy matches.
    Allow,
    /// Deny requests any policy matches.
    Deny,
}

/// A string condition (exact or prefix, optionally case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StrMatch {
    /// `exact` or `prefix`.
    pub kind: StrKind,
    /// The pattern.
    pub value: String,
    /// Compare ASCII case-insensitively.
    pub ignore_case: bool,
}

/// The string match kinds the proxy supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StrKind {
    /// Whole string.
    Exact,
    /// Leading part.
    Prefix,
}

impl StrMatch {
    /// Whether `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        match (self.kind, self.ignore_case) {
            (StrKind::Exact, false) => s == self.value,
            (StrKind::Exact, true) => s.eq_ignore_ascii_case(&self.value),
            (StrKind::Prefix, false) => s.starts_with(self.value.as_str()),
            (StrKind::Prefix, true) => s
                .get(..self.value.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(&self.value)),
        }
    }
}

/// Who may call: a decoded `envoy.config.rbac.v3.Principal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Principal {
    /// Anyone, with or without a certificate.
    Any,
    /// A caller with a verified certificate whose SPIFFE ID matches (any
    /// authenticated caller when `None`).
    Authenticated(Option<StrMatch>),
    /// Any of these.
    Or(Vec<Principal>),
    /// All of these.
    And(Vec<Principal>),
    /// Not this.
    Not(Box<Principal>),
}

/// What may be called: a decoded `envoy.config.rbac.v3.Permission`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Any request.
    Any,
    /// The path (without query) matches.
    Path(StrMatch),
    /// The method matches.
    Method(StrMatch),
    /// Any of these.
    Or(Vec<Permission>),
    /// All of these.
    And(Vec<Permission>),
    /// Not this.
    Not(Box<Permission>),
}

/// One named policy: matches when some permission and some principal match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Policy name (`<namespace>/<name>[<rule>]` from the controller).
    pub name: String,
    /// OR-ed.
    pub permissions: Vec<Permission>,
    /// OR-ed.
    pub principals: Vec<Principal>,
}

/// One RBAC filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RbacFilter {
    /// ALLOW or DENY.
    pub action: Action,
    /// Policies in lexicographic name order (Envoy's evaluation order).
    pub policies: Vec<Policy>,
}

/// The authorization of one filter chain: its RBAC filters in order. Empty means
/// every request is allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Authz {
    /// Filters in HTTP filter order.
    pub filters: Vec<RbacFilter>,
}

/// What a request looks like to policy.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// The caller's verified SPIFFE ID; `None` for plaintext callers.
    pub principal: Option<&'a str>,
    /// Request path without the query.
    pub path: &'a str,
    /// Request method.
    pub method: &'a str,
}

/// Why a request was denied; the `reason` label of `mesh_authorization_denied_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// A DENY policy matched.
    DenyPolicy,
    /// An ALLOW filter exists and none of its policies matched.
    NoAllowPolicy,
}

impl DenyReason {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::DenyPolicy => "deny_policy",
            DenyReason::NoAllowPolicy => "no_allow_policy",
        }
    }
}

/// The outcome of evaluating [`Authz`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Pass the request on.
    Allow,
    /// Answer 403.
    Deny {
        /// Which rule kind denied it.
        reason: DenyReason,
        /// The matching DENY policy (none for [`DenyReason::NoAllowPolicy`]).
        policy: Option<String>,
    },
}

impl Principal {
    fn matches(&self, who: Option<&str>) -> bool {
        match self {
            Principal::Any => true,
            Principal::Authenticated(None) => who.is_some(),
            Principal::Authenticated(Some(m)) => who.is_some_and(|p| m.matches(p)),
            Principal::Or(ids) => ids.iter().any(|p| p.matches(who)),
            Principal::And(ids) => ids.iter().all(|p| p.matches(who)),
            Principal::Not(p) => !p.matches(who),
        }
    }
}

impl Permission {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        match self {
            Permission::Any => true,
            Permission::Path(m) => m.matches(a.path),
            Permission::Method(m) => m.matches(a.method),
            Permission::Or(rules) => rules.iter().any(|r| r.matches(a)),
            Permission::And(rules) => rules.iter().all(|r| r.matches(a)),
            Permission::Not(r) => !r.matches(a),
        }
    }
}

impl Policy {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        self.permissions.iter().any(|p| p.matches(a))
            && self.principals.iter().any(|p| p.matches(a.principal))
    }
}

impl Authz {
    /// Whether there is nothing to check.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Runs the filters in order; the first that denies decides.
    pub fn evaluate(&self, a: &Attributes<'_>) -> Verdict {
        for f in &self.filters {
            let hit = f.policies.iter().find(|p| p.matches(a));
            match (f.action, hit) {
                (Action::Deny, Some(p)) => {
                    return Verdict::Deny {
                        reason: DenyReason::DenyPolicy,
                        policy: Some(p.name.clone()),
                    };
                }
                (Action::Allow, None) => {
                    return Verdict::Deny {
                        reason: DenyReason::NoAllowPolicy,
                        policy: None,
                    };
                }
                _ => {}
            }
        }
        Verdict::Allow
    }
}

fn string(m: &StringMatcher, what: &str) -> Result<StrMatch, String> {
    let (kind, value) = match &m.match_pattern {
        Some(string_matcher::MatchPattern::Exact(v)) => (StrKind::Exact, v.clone()),
        Some(string_matcher::MatchPattern::Prefix(v)) => (StrKind::Prefix, v.clone()),
        Some(other) => {
            let name = match other {
                string_matcher::MatchPattern::Suffix(_) => "suffix",
                string_matcher::MatchPattern::SafeRegex(_) => "safe_regex",
                string_matcher::MatchPattern::Contains(_) => "contains",
                _ => "custom",
            };
            return Err(format!(
                "{what}: string match {name} is not supported (exact, prefix)"
            ));
        }
        None => return Err(format!("{what}: string matcher without a pattern")),
    };
    Ok(StrMatch {
        kind,
        value,
        ignore_case: m.ignore_case,
    })
}

fn decode_principal(p: &EnvoyPrincipal, depth: usize) -> Result<Principal, String> {
    if depth > 32 {
        return Err("principal nested too deeply".into());
    }
    let list = |ids: &[EnvoyPrincipal]| -> Result<Vec<Principal>, String> {
        ids.iter().map(|p| decode_principal(p, depth + 1)).collect()
    };
    use principal::Identifier as I;
    Ok(match &p.identifier {
        Some(I::Any(true)) => Principal::Any,
        Some(I::Any(false)) => return Err("principal any: false is meaningless".into()),
        Some(I::Authenticated(a)) => Principal::Authenticated(
            a.principal_name
                .as_ref()
                .map(|m| string(m, "principal_name"))
                .transpose()?,
        ),
        Some(I::OrIds(s)) => Principal::Or(list(&s.ids)?),
        Some(I::AndIds(s)) => Principal::And(list(&s.ids)?),
        Some(I::NotId(p)) => Principal::Not(Box::new(decode_principal(p, depth + 1)?)),
        Some(other) => {
            let name = format!("{other:?}");
            let name = name.split('(').next().unwrap_or("?");
            return Err(format!(
                "principal {name} is not supported (any, authenticated, or_ids, and_ids, not_id)"
            ));
        }
        None => return Err("principal without an identifier".into()),
    })
}

// `exact_match`/`prefix_match` are deprecated but still sent by older control planes.
#[allow(deprecated)]
fn header(h: &HeaderMatcher) -> Result<Permission, String> {
    if h.name != ":method" {
        return Err(format!(
            "header permission on {:?} is not supported (only :method)",
            h.name
        ));
    }
    use header_matcher::HeaderMatchSpecifier as S;
    let m = match &h.header_match_specifier {
        Some(S::StringMatch(m)) => string(m, "header :method")?,
        Some(S::ExactMatch(v)) => StrMatch {
            kind: StrKind::Exact,
            value: v.clone(),
            ignore_case: false,
        },
        Some(S::PrefixMatch(v)) => StrMatch {
            kind: StrKind::Prefix,
            value: v.clone(),
            ignore_case: false,
        },
        _ => {
            return Err("header :method: only string_match exact/prefix is supported".into());
        }
    };
    let p = Permission::Method(m);
    Ok(if h.invert_match {
        Permission::Not(Box::new(p))
    } else {
        p
    })
}

fn decode_permission(p: &EnvoyPermission, depth: usize) -> Result<Permission, String> {
    if depth > 32 {
        return Err("permission nested too deeply".into());
    }
    let list = |rules: &[EnvoyPermission]| -> Result<Vec<Permission>, String> {
        rules
            .iter()
            .map(|p| decode_permission(p, depth + 1))
            .collect()
    };
    use permission::Rule as R;
    Ok(match &p.rule {
        Some(R::Any(true)) => Permission::Any,
        Some(R::Any(false)) => return Err("permission any: false is meaningless".into()),
        Some(R::UrlPath(pm)) => match &pm.rule {
            Some(path_matcher::Rule::Path(m)) => Permission::Path(string(m, "url_path")?),
            None => return Err("url_path without a matcher".into()),
        },
        Some(R::Header(h)) => header(h)?,
        Some(R::OrRules(s)) => Permission::Or(list(&s.rules)?),
        Some(R::AndRules(s)) => Permission::And(list(&s.rules)?),
        Some(R::NotRule(p)) => Permission::Not(Box::new(decode_permission(p, depth + 1)?)),
        Some(other) => {
            let name = format!("{other:?}");
            let name = name.split('(').next().unwrap_or("?");
            return Err(format!(
                "permission {name} is not supported (any, url_path, header :method, or_rules, and_rules, not_rule)"
            ));
        }
        None => return Err("permission without a rule".into()),
    })
}

/// Decodes the `typed_config` of an `envoy.filters.http.rbac` filter. `None` when
/// the filter has no rules (Envoy then lets everything through).
pub fn decode_rbac(any: &Any) -> Result<Option<RbacFilter>, String> {
    let rbac: Rbac = unpack(any).map_err(|e| format!("RBAC filter: {e}"))?;
    if rbac.matcher.is_some() || rbac.shadow_matcher.is_some() {
        return Err("RBAC filter: matcher trees are not supported (use rules)".into());
    }
    rbac.rules.as_ref().map(decode_rules).transpose()
}

/// Decodes the `typed_config` of an `envoy.filters.network.rbac` filter (opaque
/// TCP chains). A connection has no path or method, so permissions on them are
/// refused rather than guessed at.
pub fn decode_network_rbac(any: &Any) -> Result<Option<RbacFilter>, String> {
    let rbac: NetworkRbac = unpack(any).map_err(|e| format!("network RBAC filter: {e}"))?;
    if rbac.matcher.is_some() || rbac.shadow_matcher.is_some() {
        return Err("network RBAC filter: matcher trees are not supported (use rules)".into());
    }
    let Some(filter) = rbac.rules.as_ref().map(decode_rules).transpose()? else {
        return Ok(None);
    };
    fn connection_level(p: &Permission) -> bool {
        match p {
            Permission::Any => true,
            Permission::Path(_) | Permission::Method(_) => false,
            Permission::Or(v) | Permission::And(v) => v.iter().all(connection_level),
            Permission::Not(p) => connection_level(p),
        }
    }
    for policy in &filter.policies {
        if !policy.permissions.iter().all(connection_level) {
            return Err(format!(
                "network RBAC policy {:?}: path and method permissions need HTTP",
                policy.name
            ));
        }
    }
    Ok(Some(filter))
}

fn decode_rules(rules: &RbacRules) -> Result<RbacFilter, String> {
    let action = match EnvoyAction::try_from(rules.action) {
        Ok(EnvoyAction::Allow) => Action::Allow,
        Ok(EnvoyAction::Deny) => Action::Deny,
        Ok(other) => {
            return Err(format!(
                "RBAC filter: action {} is not supported (ALLOW, DENY)",
                other.as_str_name()
            ));
        }
        Err(_) => return Err(format!("RBAC filter: unknown action {}", rules.action)),
    };
    let mut names: Vec<&String> = rules.policies.keys().collect();
    names.sort();
    let mut policies = Vec::with_capacity(names.len());
    for name in names {
        let p = &rules.policies[name];
        let at = |e: String| format!("RBAC policy {name:?}: {e}");
        if p.condition.is_some() || p.checked_condition.is_some() || p.cel_config.is_some() {
            return Err(at("CEL conditions are not supported".into()));
        }
        if p.permissions.is_empty() || p.principals.is_empty() {
            return Err(at("needs at least one permission and one principal".into()));
        }
        policies.push(Policy {
            name: name.clone(),
            permissions: p
                .permissions
                .iter()
                .map(|x| decode_permission(x, 0))
                .collect::<Result<_, _>>()
                .map_err(at)?,
            principals: p
                .principals
                .iter()
                .map(|x| decode_principal(x, 0))
                .collect::<Result<_, _>>()
                .map_err(at)?,
        });
    }
    Ok(RbacFilter { action, policies })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
    use mesh_model::{
        AuthorizationAction, AuthorizationOperation, AuthorizationPolicy, AuthorizationRule,
        AuthorizationSource,
    };

    fn decode_filters(policies: &[AuthorizationPolicy]) -> Authz {
        let refs: Vec<&AuthorizationPolicy> = policies.iter().collect();
        let filters = mesh_xds::authz::rbac_filters(&refs, "cluster.local");
        Authz {
            filters: filters
                .iter()
                .filter_map(|f| match &f.config_type {
                    Some(http_filter::ConfigType::TypedConfig(any)) => {
                        decode_rbac(any).expect("decodes")
                    }
                    _ => None,
                })
                .collect(),
        }
    }

    fn attrs<'a>(principal: Option<&'a str>, method: &'a str, path: &'a str) -> Attributes<'a> {
        Attributes {
            principal,
            path,
            method,
        }
    }

    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
    const EVIL: &str = "spiffe://cluster.local/ns/evil/sa/x";

    fn policy(
        name: &str,
        action: AuthorizationAction,
        from: Vec<AuthorizationSource>,
        to: Vec<AuthorizationOperation>,
    ) -> AuthorizationPolicy {
        AuthorizationPolicy {
            name: name.into(),
            namespace: "shop".into(),
            selector: Default::default(),
            action,
            rules: vec![AuthorizationRule { from, to }],
        }
    }

    fn src(principals: &[&str], namespaces: &[&str]) -> AuthorizationSource {
        AuthorizationSource {
            principals: principals.iter().map(|s| s.to_string()).collect(),
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn op(paths: &[&str], methods: &[&str]) -> AuthorizationOperation {
        AuthorizationOperation {
            paths: paths.iter().map(|s| s.to_string()).collect(),
            methods: methods.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn no_policies_allow_everything() {
        let a = decode_filters(&[]);
        assert!(a.is_empty());
        assert_eq!(a.evaluate(&attrs(None, "GET", "/")), Verdict::Allow);
    }

    #[test]
    fn allow_by_namespace_path_and_method() {
        let a = decode_filters(&[policy(
            "readers",
            AuthorizationAction::Allow,
            vec![src(&[], &["shop"])],
            vec![op(&["/api/*"], &["GET"])],
        )]);
        assert_eq!(a.filters.len(), 1);
        assert_eq!(
            a.evaluate(&attrs(Some(WEB), "GET", "/api/x")),
            Verdict::Allow
        );
        let no = Verdict::Deny {
            reason: DenyReason::NoAllowPolicy,
            policy: None,
        };
        assert_eq!(a.evaluate(&attrs(Some(WEB), "POST", "/api/x")), no);
        assert_eq!(a.evaluate(&attrs(Some(WEB), "GET", "/admin")), no);
        assert_eq!(a.evaluate(&attrs(Some(EVIL), "GET", "/api/x")), no);
        // Plaintext callers have no principal.
        assert_eq!(a.evaluate(&attrs(None, "GET", "/api/x")), no);
    }

    #[test]
    fn deny_runs_before_allow() {
        let a = decode_filters(&[
            policy(
                "everyone",
                AuthorizationAction::Allow,
                vec![src(&["*"], &[])],
                vec![],
            ),
            policy(
                "no-evil",
                AuthorizationAction::Deny,
                vec![src(&[], &["evil"])],
                vec![],
            ),
        ]);
        assert_eq!(a.filters[0].action, Action::Deny);
        assert_eq!(a.filters[1].action, Action::Allow);
        assert_eq!(a.evaluate(&attrs(Some(WEB), "GET", "/")), Verdict::Allow);
        assert_eq!(
            a.evaluate(&attrs(Some(EVIL), "GET", "/")),
            Verdict::Deny {
                reason: DenyReason::DenyPolicy,
                policy: Some("shop/no-evil[0]".into())
            }
        );
        // `*` means any authenticated caller, so plaintext is not allowed.
        assert!(matches!(
            a.evaluate(&attrs(None, "GET", "/")),
            Verdict::Deny {
                reason: DenyReason::NoAllowPolicy,
                ..
            }
        ));
    }

    #[test]
    fn allow_policy_without_rules_denies_all() {
        let mut p = policy("nothing", AuthorizationAction::Allow, vec![], vec![]);
        p.rules.clear();
        let a = decode_filters(&[p]);
        assert_eq!(a.filters.len(), 1);
        assert!(a.filters[0].policies.is_empty());
        assert!(matches!(
            a.evaluate(&attrs(Some(WEB), "GET", "/")),
            Verdict::Deny { .. }
        ));
    }

    #[test]
    fn not_and_or_principals() {
        let p = Principal::Not(Box::new(Principal::Authenticated(None)));
        assert!(p.matches(None));
        assert!(!p.matches(Some(WEB)));
        let both = Principal::And(vec![
            Principal::Authenticated(Some(StrMatch {
                kind: StrKind::Prefix,
                value: "SPIFFE://cluster.local/ns/shop/".into(),
                ignore_case: true,
            })),
            Principal::Not(Box::new(Principal::Authenticated(Some(StrMatch {
                kind: StrKind::Exact,
                value: WEB.into(),
                ignore_case: false,
            })))),
        ]);
        assert!(!both.matches(Some(WEB)));
        assert!(both.matches(Some("spiffe://cluster.local/ns/shop/sa/cart")));
        let perm = Permission::Not(Box::new(Permission::Method(StrMatch {
            kind: StrKind::Exact,
            value: "GET".into(),
            ignore_case: false,
        })));
        assert!(perm.matches(&attrs(None, "POST", "/")));
    }

    #[test]
    #[allow(deprecated)] // SourceIp: an unsupported principal is the point.
    fn unsupported_matchers_are_rejected() {
        use envoy_types::pb::envoy::config::rbac::v3::{Policy as EP, Rbac as Rules};
        let rbac = |principal: EnvoyPrincipal, permission: EnvoyPermission, action| {
            mesh_xds::any::pack(&Rbac {
                rules: Some(Rules {
                    action,
                    policies: [(
                        "p".to_string(),
                        EP {
                            permissions: vec![permission],
                            principals: vec![principal],
                            ..Default::default()
                        },
                    )]
                    .into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        let any_id = EnvoyPrincipal {
            identifier: Some(principal::Identifier::Any(true)),
        };
        let any_perm = EnvoyPermission {
            rule: Some(permission::Rule::Any(true)),
        };
        let ip = EnvoyPrincipal {
            identifier: Some(principal::Identifier::SourceIp(Default::default())),
        };
        let e = decode_rbac(&rbac(ip, any_perm.clone(), EnvoyAction::Allow as i32)).unwrap_err();
        assert!(e.contains("principal SourceIp is not supported"), "{e}");
        let port = EnvoyPermission {
            rule: Some(permission::Rule::DestinationPort(80)),
        };
        let e = decode_rbac(&rbac(any_id.clone(), port, EnvoyAction::Deny as i32)).unwrap_err();
        assert!(e.contains("RBAC policy \"p\""), "{e}");
        assert!(e.contains("DestinationPort"), "{e}");
        let e = decode_rbac(&rbac(
            any_id.clone(),
            any_perm.clone(),
            EnvoyAction::Log as i32,
        ))
        .unwrap_err();
        assert!(e.contains("LOG"), "{e}");
        let suffix = EnvoyPermission {
            rule: Some(permission::Rule::UrlPath(
                envoy_types::pb::envoy::r#type::matcher::v3::PathMatcher {
                    rule: Some(path_matcher::Rule::Path(StringMatcher {
                        match_pattern: Some(string_matcher::MatchPattern::Suffix("x".into())),
                        ..Default::default()
                    })),
                },
            )),
        };
        let e = decode_rbac(&rbac(any_id, suffix, EnvoyAction::Allow as i32)).unwrap_err();
        assert!(e.contains("suffix"), "{e}");
    }
}
