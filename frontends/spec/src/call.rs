//! `--call`: `targets` (the stages, from the file alone) and `check` (the whole lowering, its
//! warnings and its first error, nothing built), answered in the response's `call_result` as
//! the Dockerfile frontend answers them, so that `kiln build --call` prints them alike.

use kiln_graph::State;
use kiln_plugin_sdk::proto::{FrontendRequest, FrontendResponse};
use kiln_types::image::ImageConfig;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::host::SpecHost;
use crate::{lower, schema};

/// The `--call` values this frontend answers (`build` is the build itself).
pub(crate) const CALLS: [&str; 3] = ["build", "check", "targets"];

/// The `--call` a request asks for, when it is not a build.
pub(crate) fn requested(req: &FrontendRequest) -> Option<String> {
    req.options
        .get("call")
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "build")
}

/// The answer to `--call call`.
pub(crate) fn answer(
    call: &str,
    req: &FrontendRequest,
    host: &dyn SpecHost,
) -> Result<FrontendResponse> {
    let result = match call {
        "targets" => targets(req)?,
        "check" => check(req, host),
        other => {
            let mut message = format!(
                "--call {other} is not supported by the spec frontend: expected one of {}",
                CALLS.join(", ")
            );
            if let Some(s) = dockerfile_parser::suggest::closest(other, CALLS) {
                message.push_str(&format!(" (did you mean {s}?)"));
            }
            return Err(Error::unsupported(None, message));
        }
    };
    let mut response = FrontendResponse::new(
        State::definition(&[State::scratch()]),
        ImageConfig::scratch(&req.platform),
    );
    response.call_result = Some(result);
    Ok(response)
}

/// Every stage, in file order; the last one is the default target.
fn targets(req: &FrontendRequest) -> Result<Value> {
    let spec = schema::parse(&req.source)?;
    let last = spec.stages.len().saturating_sub(1);
    let stages: Vec<Value> = spec
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "name": s.name.value,
                "description": s.description.clone().unwrap_or_default(),
                "base": s.from.value,
                "platform": s.platform.as_ref().map(|p| p.value.clone()),
                "default": i == last,
                "location": { "file": req.filename, "line": s.name.line },
            })
        })
        .collect();
    Ok(json!({ "targets": stages }))
}

/// The build's warnings, and its error when lowering fails, located in the build file.
fn check(req: &FrontendRequest, host: &dyn SpecHost) -> Value {
    match lower::lower(req, host) {
        Ok(response) => {
            let warnings: Vec<Value> = response
                .warnings
                .iter()
                .map(|w| {
                    json!({
                        "ruleName": "SpecWarning",
                        "description": w.message,
                        "detail": w.message,
                        "location": w.location.as_ref().map(|l| json!({"file": l.file, "line": l.line})),
                    })
                })
                .collect();
            json!({ "warnings": warnings })
        }
        Err(e) => {
            let e = e.into_plugin_error(&req.filename, &req.source);
            json!({
                "warnings": [],
                "error": {
                    "message": e.message,
                    "location": e.location.map(|l| json!({"file": l.file, "line": l.line})),
                },
            })
        }
    }
}
