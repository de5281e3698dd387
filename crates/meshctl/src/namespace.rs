//! `meshctl namespace enable|disable NS`: sets or removes the namespace label
//! `mesh.io/inject=enabled`, the one switch that puts a namespace in the mesh
//! (the controller picks the change up without a restart; pods created from
//! then on get the sidecar).

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use mesh_controller::inject::{NAMESPACE_LABEL, NAMESPACE_LABEL_ENABLED};
use serde_json::{Value, json};

use crate::cli::{NamespaceArgs, NamespaceCommand, NamespaceTarget};

/// The JSON merge patch (RFC 7386) that sets (`enable`) or removes the label;
/// `null` deletes a key, so removing an absent label is a no-op.
pub fn label_patch(enable: bool) -> Value {
    let value = if enable {
        json!(NAMESPACE_LABEL_ENABLED)
    } else {
        Value::Null
    };
    json!({"metadata": {"labels": {NAMESPACE_LABEL: value}}})
}

/// A client from `--kubeconfig`/`--context`, else the usual places
/// (`$KUBECONFIG`, `~/.kube/config`, in-cluster).
pub async fn client(target: &NamespaceTarget) -> anyhow::Result<kube::Client> {
    let options = KubeConfigOptions {
        context: target.context.clone(),
        ..Default::default()
    };
    let config = match &target.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None if target.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
        None => kube::Config::infer()
            .await
            .context("no Kubernetes cluster configured (give --kubeconfig, or set KUBECONFIG)")?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// Sets or removes the label and prints what it did.
pub async fn set(target: &NamespaceTarget, enable: bool) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client(target).await?);
    let name = &target.namespace;
    match api
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(label_patch(enable)),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {
            anyhow::bail!(
                "namespace {name} does not exist (create it with kubectl create namespace {name})"
            )
        }
        Err(kube::Error::Api(e)) if e.code == 403 => {
            anyhow::bail!("not allowed to change namespace {name}: {}", e.message)
        }
        Err(e) => return Err(e).with_context(|| format!("cannot label namespace {name}")),
    }
    if enable {
        println!(
            "namespace {name}: {NAMESPACE_LABEL}={NAMESPACE_LABEL_ENABLED}; new pods get the sidecar \
             (restart existing ones: kubectl rollout restart deployment -n {name})"
        );
    } else {
        println!(
            "namespace {name}: {NAMESPACE_LABEL} removed; it leaves the mesh now, and pods \
             lose their sidecar when restarted"
        );
    }
    Ok(())
}

/// Runs `meshctl namespace ...`.
pub async fn run(args: NamespaceArgs) -> anyhow::Result<()> {
    match args.command {
        NamespaceCommand::Enable(t) => set(&t, true).await,
        NamespaceCommand::Disable(t) => set(&t, false).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches() {
        assert_eq!(
            label_patch(true),
            json!({"metadata": {"labels": {"mesh.io/inject": "enabled"}}})
        );
        assert_eq!(
            label_patch(false),
            json!({"metadata": {"labels": {"mesh.io/inject": null}}})
        );
    }
}
