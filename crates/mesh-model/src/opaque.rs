//! Opaque ports: service ports the mesh proxies as plain TCP and never sniffs.
//!
//! A port is opaque when its `appProtocol` names a non-HTTP protocol
//! ([`OPAQUE_APP_PROTOCOLS`]) or the Service's `mesh.io/opaque-ports` annotation
//! lists it (Linkerd's annotation, for services whose manifests cannot set
//! `appProtocol`). Server-speaks-first protocols (MySQL, SMTP) need it: the
//! client waits for the server's greeting, so there is nothing to sniff.

use crate::ServicePort;

/// The Service annotation listing opaque ports: `"3306,5432"`.
pub const OPAQUE_PORTS_ANNOTATION: &str = "mesh.io/opaque-ports";

/// `appProtocol` values that make a port opaque (compared case-insensitively).
pub const OPAQUE_APP_PROTOCOLS: [&str; 11] = [
    "tcp",
    "tls",
    "mysql",
    "mongo",
    "mongodb",
    "postgres",
    "postgresql",
    "redis",
    "smtp",
    "amqp",
    "kafka",
];

/// Whether an `appProtocol` value names an opaque protocol.
pub fn is_opaque_protocol(app_protocol: Option<&str>) -> bool {
    app_protocol.is_some_and(|p| {
        OPAQUE_APP_PROTOCOLS
            .iter()
            .any(|o| o.eq_ignore_ascii_case(p))
    })
}

impl ServicePort {
    /// Whether the port is proxied as opaque TCP.
    pub fn is_opaque(&self) -> bool {
        is_opaque_protocol(self.app_protocol.as_deref())
    }
}

/// Applies a `mesh.io/opaque-ports` value to `ports`: each listed port without
/// an `appProtocol` becomes `tcp`. Errors name the problem: a token that is not a
/// port number, a port the service does not have, or a port whose `appProtocol`
/// says it is something else (HTTP, gRPC). On error `ports` is unchanged.
pub fn apply_opaque_ports(value: &str, ports: &mut [ServicePort]) -> Result<(), String> {
    let mut updated = ports.to_vec();
    mark_opaque(value, &mut updated)?;
    ports.clone_from_slice(&updated);
    Ok(())
}

fn mark_opaque(value: &str, ports: &mut [ServicePort]) -> Result<(), String> {
    for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let port: u16 = token
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{token:?} is not a port number (1-65535)"))?;
        let Some(p) = ports.iter_mut().find(|p| p.port == port) else {
            let known: Vec<String> = ports.iter().map(|p| p.port.to_string()).collect();
            return Err(format!(
                "port {port} is not a port of this service (it has {})",
                known.join(", ")
            ));
        };
        match p.app_protocol.as_deref() {
            None => p.app_protocol = Some("tcp".into()),
            Some(proto) if is_opaque_protocol(Some(proto)) => {}
            Some(proto) => {
                return Err(format!(
                    "port {port} has appProtocol {proto:?}, which is not opaque"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TargetPort;

    fn port(n: u16, proto: Option<&str>) -> ServicePort {
        ServicePort {
            name: None,
            port: n,
            target_port: TargetPort::Number(n),
            app_protocol: proto.map(str::to_string),
        }
    }

    #[test]
    fn protocols_and_annotation() {
        assert!(port(1, Some("MySQL")).is_opaque());
        assert!(port(1, Some("tcp")).is_opaque());
        assert!(!port(1, Some("http")).is_opaque());
        assert!(!port(1, None).is_opaque());

        let mut ports = vec![
            port(80, None),
            port(3306, None),
            port(5432, Some("postgresql")),
        ];
        apply_opaque_ports(" 3306, 5432 ", &mut ports).unwrap();
        assert!(!ports[0].is_opaque());
        assert_eq!(ports[1].app_protocol.as_deref(), Some("tcp"));
        assert_eq!(ports[2].app_protocol.as_deref(), Some("postgresql"));

        let e = apply_opaque_ports("3306,x", &mut ports).unwrap_err();
        assert!(e.contains("\"x\" is not a port number"), "{e}");
        let e = apply_opaque_ports("9999", &mut ports).unwrap_err();
        assert!(
            e.contains("port 9999 is not a port of this service (it has 80, 3306, 5432)"),
            "{e}"
        );
        let mut grpc = vec![port(9090, Some("grpc"))];
        let e = apply_opaque_ports("9090", &mut grpc).unwrap_err();
        assert!(e.contains("appProtocol \"grpc\""), "{e}");
    }
}
