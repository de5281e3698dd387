//! `meshctl token create`: a join token for one identity, from the controller.
//!
//! The token is the only thing printed on stdout, so that
//! `MESH_TOKEN=$(meshctl token create ...)` works; the identity it certifies as goes
//! to stderr when that is a terminal, where a human reads it.

use std::io::IsTerminal as _;

use crate::cli::{TokenCreateArgs, TokenOutput};
use crate::controller::Controller;

/// Asks the controller for a token and prints it.
pub async fn create(args: TokenCreateArgs) -> anyhow::Result<()> {
    let issued = Controller::from_flag(&args.controller)
        .create_token(&args.namespace, &args.service_account, args.ttl)
        .await?;
    match args.output {
        TokenOutput::Token => {
            println!("{}", issued.token);
            if std::io::stderr().is_terminal() {
                let ttl = args.ttl.map_or_else(
                    || "the controller's default lifetime (24h)".to_string(),
                    |t| {
                        crate::format::human_duration(
                            i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
                        )
                    },
                );
                eprintln!("join token for {} valid for {ttl}", issued.identity);
            }
        }
        TokenOutput::Json => println!("{}", serde_json::to_string_pretty(&issued)?),
    }
    Ok(())
}
