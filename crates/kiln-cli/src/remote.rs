//! `kiln build --builder ADDR|NAME`: the same flags as a local build, run on a `kiln serve`
//! daemon; progress, outputs and errors come back and are reported as a local build's.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use kiln_server::client::Client;
use kiln_server::Address;
use kiln_solver::CancellationToken;

use crate::build::{report_failure, report_outcome, Display, Plan};
use crate::{builders, config, BuildArgs};

/// Runs the build on `builder`'s node.
pub fn build(
    settings: &config::Config,
    args: &BuildArgs,
    builder: &builders::Builder,
) -> Result<ExitCode> {
    let Some(node) = builder.nodes.first() else {
        bail!(
            "builder {:?} has no nodes: add one with `kiln builder create --append`",
            builder.name
        );
    };
    if builder.nodes.len() > 1 {
        bail!(
            "builder {:?} has {} nodes: builds spread over several nodes are not implemented \
             yet; use one node's address with --builder",
            builder.name,
            builder.nodes.len()
        );
    }
    let addr = Address::parse(&node.endpoint.to_string())?;
    let (plan, req) = Plan::from_args(settings, args)?;
    if plan.remote.is_some() {
        bail!(
            "a remote builder cannot build a URL or stdin context yet: clone or unpack it and \
             give its directory"
        );
    }
    let display = Display::from_args(args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let cancel = CancellationToken::new();
    let progress = display.progress.clone();
    let result = rt.block_on(async {
        tokio::spawn(crate::interrupts(cancel.clone()));
        let mut client = Client::connect(&addr).await?;
        client.build(&req, progress, cancel.clone()).await
    });
    display.renderer.finish();
    match result? {
        Ok(outcome) => report_outcome(args, &plan, &display, &outcome, &req.dockerfile),
        Err(failure) => Ok(report_failure(&display, &failure, &req.dockerfile)),
    }
}
