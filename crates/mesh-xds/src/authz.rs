//! AuthorizationPolicy -> Envoy RBAC HTTP filters.
//!
//! Each policy rule becomes one RBAC `Policy` (its sources OR-ed as principals, its
//! operations OR-ed as permissions, fields within a source or operation AND-ed).
//! The inbound HTTP chain gets a DENY filter with every DENY policy, then an ALLOW
//! filter with every ALLOW policy, which is exactly "DENY first, then ALLOW; no ALLOW
//! policy means allow". Opaque TCP chains get the same policies as network RBAC
//! filters ([`network_rbac_filters`]), which see only the caller.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::listener::v3::{Filter, filter::ConfigType};
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac as RbacRules, permission, principal, rbac::Action,
};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    PathMatcher, StringMatcher, path_matcher, string_matcher,
};
use mesh_model::{
    AuthorizationAction, AuthorizationOperation, AuthorizationPolicy, AuthorizationSource,
};

use crate::any::pack;

/// The well-known name of Envoy's RBAC HTTP filter.
pub const RBAC_FILTER: &str = "envoy.filters.http.rbac";
/// The well-known name of Envoy's RBAC network filter (opaque TCP chains).
pub const NETWORK_RBAC_FILTER: &str = "envoy.filters.network.rbac";

/// `*` suffix = prefix match, else exact.
fn string_matcher(pattern: &str) -> StringMatcher {
    let pattern = match pattern.strip_suffix('*') {
        Some(prefix) => string_matcher::MatchPattern::Prefix(prefix.to_string()),
        None => string_matcher::MatchPattern::Exact(pattern.to_string()),
    };
    StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    }
}

fn any_principal() -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Any(true)),
    }
}

fn any_permission() -> Permission {
    Permission {
        rule: Some(permission::Rule::Any(true)),
    }
}

fn authenticated(pattern: StringMatcher) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Authenticated(
            principal::Authenticated {
                principal_name: Some(pattern),
            },
        )),
    }
}

fn or_ids(ids: Vec<Principal>) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::OrIds(principal::Set { ids })),
    }
}

fn and_ids(ids: Vec<Principal>) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::AndIds(principal::Set { ids })),
    }
}

fn or_rules(rules: Vec<Permission>) -> Permission {
    Permission {
        rule: Some(permission::Rule::OrRules(permission::Set { rules })),
    }
}

fn and_rules(rules: Vec<Permission>) -> Permission {
    Permission {
        rule: Some(permission::Rule::AndRules(permission::Set { rules })),
    }
}

fn source(s: &AuthorizationSource, trust_domain: &str) -> Principal {
    let mut all = Vec::new();
    if !s.principals.is_empty() {
        all.push(or_ids(
            s.principals
                .iter()
                .map(|p| {
                    if p == "*" {
                        // Any authenticated caller.
                        authenticated(string_matcher("spiffe://*"))
                    } else {
                        authenticated(string_matcher(p))
                    }
                })
                .collect(),
        ));
    }
    if !s.namespaces.is_empty() {
        all.push(or_ids(
            s.namespaces
                .iter()
                .map(|ns| {
                    if ns == "*" {
                        authenticated(string_matcher("spiffe://*"))
                    } else {
                        authenticated(string_matcher(&format!(
                            "spiffe://{trust_domain}/ns/{ns}/sa/*"
                        )))
                    }
                })
                .collect(),
        ));
    }
    if all.is_empty() {
        any_principal()
    } else {
        and_ids(all)
    }
}

fn operation(o: &AuthorizationOperation) -> Permission {
    let mut all = Vec::new();
    if !o.paths.is_empty() {
        all.push(or_rules(
            o.paths
                .iter()
                .map(|p| Permission {
                    rule: Some(permission::Rule::UrlPath(PathMatcher {
                        rule: Some(path_matcher::Rule::Path(string_matcher(p))),
                    })),
                })
                .collect(),
        ));
    }
    if !o.methods.is_empty() {
        all.push(or_rules(
            o.methods
                .iter()
                .map(|m| Permission {
                    rule: Some(permission::Rule::Header(HeaderMatcher {
                        name: ":method".into(),
                        header_match_specifier: Some(
                            header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
                                match_pattern: Some(string_matcher::MatchPattern::Exact(m.clone())),
                                ..Default::default()
                            }),
                        ),
                        ..Default::default()
                    })),
                })
                .collect(),
        ));
    }
    if all.is_empty() {
        any_permission()
    } else {
        and_rules(all)
    }
}

fn rbac_filter(action: Action, policies: HashMap<String, Policy>) -> HttpFilter {
    let config = Rbac {
        rules: Some(rbac_rules(action, policies)),
        ..Default::default()
    };
    HttpFilter {
        name: RBAC_FILTER.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack(&config))),
        ..Default::default()
    }
}

fn rbac_rules(action: Action, policies: HashMap<String, Policy>) -> RbacRules {
    RbacRules {
        action: action as i32,
        policies,
        ..Default::default()
    }
}

fn network_rbac_filter(action: Action, policies: HashMap<String, Policy>) -> Filter {
    let config = NetworkRbac {
        rules: Some(rbac_rules(action, policies)),
        stat_prefix: format!("{}.", action.as_str_name().to_ascii_lowercase()),
        ..Default::default()
    };
    Filter {
        name: NETWORK_RBAC_FILTER.into(),
        config_type: Some(ConfigType::TypedConfig(pack(&config))),
    }
}

/// Which layer a filter set is for: the network filter cannot see paths or
/// methods.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layer {
    Http,
    Network,
}

/// The DENY and ALLOW policy sets of `policies`, and whether an ALLOW filter is
/// needed at all.
///
/// For the network layer, rules with `to` (paths, methods) are treated as Istio
/// does for TCP workloads: in an ALLOW policy such a rule never matches (it is
/// left out, so it allows nothing); in a DENY policy its operations are dropped,
/// so it denies its sources on every connection (failing closed).
fn policy_sets(
    policies: &[&AuthorizationPolicy],
    trust_domain: &str,
    layer: Layer,
) -> (HashMap<String, Policy>, HashMap<String, Policy>, bool) {
    let mut deny = HashMap::new();
    let mut allow = HashMap::new();
    for p in policies {
        let target = match p.action {
            AuthorizationAction::Deny => &mut deny,
            AuthorizationAction::Allow => &mut allow,
        };
        for (i, rule) in p.rules.iter().enumerate() {
            let http_only = !rule.to.is_empty();
            if layer == Layer::Network && http_only && p.action == AuthorizationAction::Allow {
                continue;
            }
            let principals = if rule.from.is_empty() {
                vec![any_principal()]
            } else {
                rule.from.iter().map(|s| source(s, trust_domain)).collect()
            };
            let permissions = if rule.to.is_empty() || layer == Layer::Network {
                vec![any_permission()]
            } else {
                rule.to.iter().map(operation).collect()
            };
            target.insert(
                format!("{}/{}[{i}]", p.namespace, p.name),
                Policy {
                    permissions,
                    principals,
                    ..Default::default()
                },
            );
        }
    }
    // An ALLOW policy without rules allows nothing but still makes the workload
    // deny-by-default, so the ALLOW filter exists whenever any ALLOW policy does
    // (an ALLOW filter with no policies denies everything).
    let has_allow = policies
        .iter()
        .any(|p| p.action == AuthorizationAction::Allow);
    (deny, allow, has_allow)
}

/// The RBAC filters for a workload's `policies` (as returned by
/// `Model::authorization_policies`): a DENY filter if any DENY policy applies, an
/// ALLOW filter if any ALLOW policy applies. Policy names are
/// `<namespace>/<name>[<rule index>]`.
pub fn rbac_filters(policies: &[&AuthorizationPolicy], trust_domain: &str) -> Vec<HttpFilter> {
    let (deny, allow, has_allow) = policy_sets(policies, trust_domain, Layer::Http);
    let mut filters = Vec::new();
    if !deny.is_empty() {
        filters.push(rbac_filter(Action::Deny, deny));
    }
    if has_allow {
        filters.push(rbac_filter(Action::Allow, allow));
    }
    filters
}

/// The same policies as network RBAC filters (`envoy.filters.network.rbac`), for
/// the opaque TCP chains of the inbound listener: sources only (see
/// [`policy_sets`] for rules with operations).
pub fn network_rbac_filters(policies: &[&AuthorizationPolicy], trust_domain: &str) -> Vec<Filter> {
    let (deny, allow, has_allow) = policy_sets(policies, trust_domain, Layer::Network);
    let mut filters = Vec::new();
    if !deny.is_empty() {
        filters.push(network_rbac_filter(Action::Deny, deny));
    }
    if has_allow {
        filters.push(network_rbac_filter(Action::Allow, allow));
    }
    filters
}
