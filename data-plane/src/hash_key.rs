//! The hash key of a request for consistent hashing: from a header or a cookie,
//! as the route's hash policies say (Envoy's rules: each policy that yields a
//! value is mixed in; a terminal one that yields stops the list).
//!
//! Sticky sessions: when a cookie policy has a ttl and the request has no such
//! cookie, the proxy makes up a value, hashes the request by it and sets the
//! cookie on the response, so the client's next requests land on the same
//! endpoint.

use http::HeaderMap;
use http::header::{COOKIE, HeaderValue};

use crate::balancer::hash_bytes;
use crate::decode_policy::{HashOn, HashPolicySpec};

/// The request's hash and, for a generated sticky cookie, the `Set-Cookie`
/// value to add to the response.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HashKey {
    /// The hash, when some policy produced one.
    pub hash: Option<u64>,
    /// A cookie to set on the response.
    pub set_cookie: Option<HeaderValue>,
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Computes the hash key of a request with `headers` under `policies`.
pub fn hash_key(policies: &[HashPolicySpec], headers: &HeaderMap) -> HashKey {
    let mut key = HashKey::default();
    for policy in policies {
        let value = match &policy.on {
            HashOn::Header(name) => {
                let values: Vec<&[u8]> = headers
                    .get_all(name.as_str())
                    .iter()
                    .map(|v| v.as_bytes())
                    .collect();
                (!values.is_empty()).then(|| hash_bytes(&values.join(&b","[..])))
            }
            HashOn::Cookie { name, ttl, path } => match cookie(headers, name) {
                Some(v) => Some(hash_bytes(v.as_bytes())),
                None => match ttl {
                    Some(ttl) if key.set_cookie.is_none() => {
                        let value = format!("{:016x}", fastrand::u64(..));
                        let mut text = format!("{name}=\"{value}\"; Max-Age={}", ttl.as_secs());
                        if !path.is_empty() {
                            text.push_str(&format!("; Path={path}"));
                        }
                        text.push_str("; HttpOnly");
                        key.set_cookie = HeaderValue::from_str(&text).ok();
                        Some(hash_bytes(value.as_bytes()))
                    }
                    _ => None,
                },
            },
        };
        if let Some(v) = value {
            key.hash = Some(match key.hash {
                None => v,
                Some(h) => h.rotate_left(1) ^ v,
            });
            if policy.terminal {
                break;
            }
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cookie_policy(ttl: Option<Duration>) -> Vec<HashPolicySpec> {
        vec![HashPolicySpec {
            on: HashOn::Cookie {
                name: "sid".into(),
                ttl,
                path: "/".into(),
            },
            terminal: false,
        }]
    }

    #[test]
    fn headers_and_cookies_hash_the_same_way_every_time() {
        let header = vec![HashPolicySpec {
            on: HashOn::Header("x-user".into()),
            terminal: false,
        }];
        let mut h = HeaderMap::new();
        assert_eq!(hash_key(&header, &h).hash, None, "no header, no hash");
        h.insert("x-user", HeaderValue::from_static("alice"));
        let a = hash_key(&header, &h).hash.unwrap();
        assert_eq!(hash_key(&header, &h).hash, Some(a));
        h.insert("x-user", HeaderValue::from_static("bob"));
        assert_ne!(hash_key(&header, &h).hash, Some(a));

        let mut c = HeaderMap::new();
        c.insert(COOKIE, HeaderValue::from_static("theme=dark; sid=\"abc\""));
        let k = hash_key(&cookie_policy(Some(Duration::from_secs(60))), &c);
        assert_eq!(k.hash, Some(hash_bytes(b"abc")));
        assert!(k.set_cookie.is_none(), "the client has its cookie");
    }

    #[test]
    fn a_missing_sticky_cookie_is_generated_and_hashes_like_its_value() {
        let k = hash_key(
            &cookie_policy(Some(Duration::from_secs(3600))),
            &HeaderMap::new(),
        );
        let set = k.set_cookie.unwrap();
        let text = set.to_str().unwrap();
        assert!(
            text.starts_with("sid=\"") && text.contains("Max-Age=3600; Path=/; HttpOnly"),
            "{text}"
        );
        // The client sends it back: same hash as the first request had.
        let value = text.split('"').nth(1).unwrap();
        let mut back = HeaderMap::new();
        back.insert(
            COOKIE,
            HeaderValue::from_str(&format!("sid={value}")).unwrap(),
        );
        assert_eq!(hash_key(&cookie_policy(None), &back).hash, k.hash);
        // Without a ttl nothing is generated.
        assert_eq!(
            hash_key(&cookie_policy(None), &HeaderMap::new()),
            HashKey::default()
        );
    }
}
