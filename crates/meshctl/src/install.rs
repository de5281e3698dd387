//! `meshctl install`: the manifests in `deploy/kubernetes/`, compiled in so the
//! binary that operates the mesh also installs exactly the version it matches.

use crate::cli::InstallArgs;

/// The manifests in apply order (namespace, CRDs, RBAC, controller, webhook),
/// by file name.
pub const MANIFESTS: &[(&str, &str)] = &[
    (
        "00-namespace.yaml",
        include_str!("../../../deploy/kubernetes/00-namespace.yaml"),
    ),
    (
        "10-crds.yaml",
        include_str!("../../../deploy/kubernetes/10-crds.yaml"),
    ),
    (
        "20-rbac.yaml",
        include_str!("../../../deploy/kubernetes/20-rbac.yaml"),
    ),
    (
        "30-controller.yaml",
        include_str!("../../../deploy/kubernetes/30-controller.yaml"),
    ),
    (
        "40-webhook.yaml",
        include_str!("../../../deploy/kubernetes/40-webhook.yaml"),
    ),
];

/// The image repository the manifests name.
pub const MANIFEST_HUB: &str = mesh_controller::inject::DEFAULT_HUB;
/// The image tag the manifests name: this build's version.
pub const MANIFEST_TAG: &str = env!("CARGO_PKG_VERSION");

/// All manifests as one multi-document YAML stream, with the images taken from
/// `hub` and `tag` (the controller's and the injected sidecar's alike).
pub fn render(hub: &str, tag: &str) -> String {
    let hub = hub.trim_end_matches('/');
    let mut out = String::new();
    for (name, text) in MANIFESTS {
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&format!("# deploy/kubernetes/{name}\n"));
        let mut text = text.to_string();
        for image in ["mesh-controller", "mesh-proxy"] {
            text = text.replace(
                &format!("{MANIFEST_HUB}/{image}:{MANIFEST_TAG}"),
                &format!("{hub}/{image}:{tag}"),
            );
        }
        out.push_str(&text);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// Prints the manifests to stdout.
pub fn run(args: &InstallArgs) -> anyhow::Result<()> {
    print!("{}", render(&args.hub, &args.tag));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_follow_flags() {
        let default = render(MANIFEST_HUB, MANIFEST_TAG);
        assert!(default.contains(&format!("ghcr.io/mesh/mesh-controller:{MANIFEST_TAG}")));
        assert!(default.contains(&format!("ghcr.io/mesh/mesh-proxy:{MANIFEST_TAG}")));
        let custom = render("registry.local:5000/me/", "dev");
        assert!(custom.contains("image: registry.local:5000/me/mesh-controller:dev"));
        assert!(custom.contains("registry.local:5000/me/mesh-proxy:dev"));
        assert!(!custom.contains("ghcr.io"));
    }
}
