//! What the CLI reports of a build, built either from a local engine result or from the wire,
//! so that a remote build prints exactly what a local one prints.

use kiln_engine::{BuildOutcome, Miss, Status};
use kiln_types::image::Descriptor;
use kiln_types::Digest;

/// A failed build, as the CLI shows it: the step and its last lines, the Dockerfile excerpt,
/// then `ERROR: failed to solve: <message>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureView {
    /// The error and its causes (without repeating a cause its parent already quotes).
    pub message: String,
    /// The failing step's id and name, when a step failed.
    pub step: Option<(Digest, String)>,
    /// The failing step's line in the Dockerfile.
    pub step_line: Option<u32>,
    /// The line a frontend error points at.
    pub frontend_line: Option<u32>,
    /// The build file's name and content, when the client does not have it (a daemon read
    /// it from a context it fetched): the lines above are shown from it.
    pub dockerfile: Option<(String, Vec<u8>)>,
    /// The file the lines above are in, as the error names it (the build file's name, or a
    /// fragment of the main context that an instruction expanded, `INCLUDE`): the client shows
    /// the lines of that file, as a local build does.
    pub location_file: Option<String>,
}

impl FailureView {
    /// The view of a local engine error.
    pub fn from_engine(e: &kiln_engine::Error) -> Self {
        FailureView {
            message: error_chain(e),
            step: e.step().map(|(id, name)| (id, name.to_owned())),
            step_line: e.step_location().map(|l| l.line),
            frontend_line: e
                .plugin_error()
                .and_then(|pe| pe.location.as_ref())
                .map(|l| l.line),
            dockerfile: None,
            location_file: location_file(e),
        }
    }
}

/// The file an engine error's line is in, as the error names it: the frontend error's
/// location, else the failing step's.
pub fn location_file(e: &kiln_engine::Error) -> Option<String> {
    e.plugin_error()
        .and_then(|pe| pe.location.as_ref())
        .map(|l| l.file.clone())
        .or_else(|| e.step_location().map(|l| l.file.clone()))
}

/// An error and its causes, without repeating a cause already quoted by its parent.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = c.source();
    }
    parts.join(": ")
}

/// A successful build, as the CLI reports it.
#[derive(Clone, Debug, Default)]
pub struct OutcomeView {
    /// A single-platform image export: the manifest descriptor and the config digest.
    pub image: Option<(Descriptor, Digest)>,
    /// A multi-platform image export: the index descriptor.
    pub index: Option<Descriptor>,
    /// Every step and whether it ran or was cached.
    pub steps: Vec<(String, Status)>,
    /// Frontend warnings: message and `file:line` when known.
    pub warnings: Vec<(String, Option<String>)>,
    /// The frontend that built the graph.
    pub frontend: String,
    /// `--call`: the frontend's answer (JSON).
    pub call_result: Option<String>,
    /// `--explain-cache`: why each step ran.
    pub explain: Vec<Miss>,
    /// With `call_result`: the build file's name and content, when the client does not have
    /// it (a daemon read it from a context it fetched): a `--check` shows its lines.
    pub dockerfile: Option<(String, Vec<u8>)>,
}

impl OutcomeView {
    /// The view of a local engine outcome.
    pub fn from_engine(outcome: BuildOutcome) -> Self {
        OutcomeView {
            image: outcome
                .image
                .as_ref()
                .map(|img| (img.manifest.clone(), img.manifest_doc.config.digest)),
            index: outcome.index,
            steps: outcome.steps,
            warnings: outcome
                .warnings
                .iter()
                .map(|w| {
                    (
                        w.message.clone(),
                        w.location.as_ref().map(ToString::to_string),
                    )
                })
                .collect(),
            frontend: outcome.frontend,
            call_result: outcome.call_result,
            explain: outcome.explain,
            dockerfile: None,
        }
    }

    /// Steps that ran (were not cached).
    pub fn executed(&self) -> usize {
        self.steps
            .iter()
            .filter(|(_, s)| matches!(s, Status::Executed { .. }))
            .count()
    }
}
