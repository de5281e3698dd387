//! Loopback addresses for workloads that name none.
//!
//! Every workload instance gets its own 127.0.N.M so that each sidecar can bind the
//! standard ports (15000, 15001, 15006) and apps can keep their real ports, all on one
//! machine. Assignment is deterministic (file order) so logs and docs stay stable.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use mesh_model::Object;

/// Hosts per third octet: 127.0.N.1 - 127.0.N.250.
const PER_BLOCK: usize = 250;
/// Third octets used: 127.0.1.x - 127.0.254.x.
const BLOCKS: usize = 254;

/// Too many workloads for the loopback range the runner uses.
#[derive(Debug, thiserror::Error)]
#[error("cannot assign a loopback address to workload {0}: all {max} are taken", max = PER_BLOCK * BLOCKS)]
pub struct AddressesExhausted(pub String);

/// The `k`-th candidate address: 127.0.(1 + k/250).(1 + k%250).
fn candidate(k: usize) -> Option<IpAddr> {
    let block = k / PER_BLOCK;
    if block >= BLOCKS {
        return None;
    }
    let n = u8::try_from(1 + block).ok()?;
    let m = u8::try_from(1 + k % PER_BLOCK).ok()?;
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, n, m)))
}

/// Fills in `spec.address` of every workload without one, in file order, skipping
/// addresses that other workloads use explicitly.
pub fn assign(objects: &mut [Object]) -> Result<(), AddressesExhausted> {
    let taken: HashSet<IpAddr> = objects
        .iter()
        .filter_map(|o| match o {
            Object::Workload(w) => w.address,
            _ => None,
        })
        .collect();
    let mut next = 0usize;
    for object in objects.iter_mut() {
        let Object::Workload(w) = object else {
            continue;
        };
        if w.address.is_some() {
            continue;
        }
        loop {
            let ip = candidate(next)
                .ok_or_else(|| AddressesExhausted(format!("{}/{}", w.namespace, w.name)))?;
            next += 1;
            if !taken.contains(&ip) {
                w.address = Some(ip);
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_model::parse_documents;

    fn workload(name: &str, address: Option<&str>) -> String {
        let addr = address.map_or(String::new(), |a| format!("  address: {a}\n"));
        format!(
            "---\napiVersion: mesh.io/v1alpha1\nkind: Workload\nmetadata: {{name: {name}}}\nspec:\n  serviceAccount: x\n{addr}"
        )
    }

    fn addresses(objects: &[Object]) -> Vec<String> {
        objects
            .iter()
            .filter_map(|o| match o {
                Object::Workload(w) => w.address.map(|a| a.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn assigns_in_file_order_skipping_explicit_ones() {
        let text = [
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n".to_string(),
            workload("a", None),
            workload("b", Some("127.0.1.2")),
            workload("c", None),
            workload("d", Some("10.1.2.3")),
            workload("e", None),
        ]
        .concat();
        let mut objects = parse_documents(&text, "t").unwrap();
        assign(&mut objects).unwrap();
        assert_eq!(
            addresses(&objects),
            [
                "127.0.1.1",
                "127.0.1.2",
                "127.0.1.3",
                "10.1.2.3",
                "127.0.1.4"
            ]
        );
        // Deterministic: the same input gives the same addresses.
        let mut again = parse_documents(&text, "t").unwrap();
        assign(&mut again).unwrap();
        assert_eq!(again, objects);
    }

    #[test]
    fn candidates_roll_over_to_the_next_block() {
        assert_eq!(candidate(0).unwrap().to_string(), "127.0.1.1");
        assert_eq!(candidate(249).unwrap().to_string(), "127.0.1.250");
        assert_eq!(candidate(250).unwrap().to_string(), "127.0.2.1");
        assert_eq!(
            candidate(PER_BLOCK * BLOCKS - 1).unwrap().to_string(),
            "127.0.254.250"
        );
        assert_eq!(candidate(PER_BLOCK * BLOCKS), None);
    }
}
