//! Reading the JSON payload of an [`Op::Custom`], as every primitive plugin does first.
//!
//! A frontend puts a primitive's parameters in the op as JSON text (`Custom { primitive, payload
//! }`); the primitive decodes them into its own serde type. The messages name the primitive, so a
//! user who sees one knows which step's plugin refused what.

use std::fmt;

use kiln_graph::Op;
use serde::de::DeserializeOwned;

use crate::proto::{ErrorKind, PluginError};

/// Why a payload could not be read.
#[derive(Debug)]
pub enum PayloadError {
    /// The op is not a custom op (a primitive was handed e.g. an exec op).
    NotCustom {
        /// The primitive that was asked.
        primitive: String,
        /// The kind of the op it got (`exec`, `file`...).
        kind: String,
    },
    /// The payload text is not the primitive's JSON.
    Invalid {
        /// The primitive that was asked.
        primitive: String,
        /// What serde said.
        source: serde_json::Error,
    },
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::NotCustom { primitive, kind } => write!(
                f,
                "the {primitive} primitive runs custom ops, not {kind} ops"
            ),
            PayloadError::Invalid { primitive, source } => {
                write!(f, "invalid {primitive} payload: {source}")
            }
        }
    }
}

impl std::error::Error for PayloadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PayloadError::NotCustom { .. } => None,
            PayloadError::Invalid { source, .. } => Some(source),
        }
    }
}

impl From<PayloadError> for PluginError {
    fn from(e: PayloadError) -> Self {
        PluginError::new(ErrorKind::InvalidInput, e.to_string())
    }
}

/// The payload of `op`, decoded as `T`, for the primitive named `primitive` (used in messages
/// only: the host routes an op to the plugin whose manifest lists its `primitive`).
///
/// ```
/// use kiln_plugin_sdk::graph::{CustomOp, Op};
/// #[derive(serde::Deserialize)]
/// struct Fetch { url: String }
/// let op = Op::Custom(CustomOp {
///     primitive: "fetch".into(),
///     payload: r#"{"url":"https://example.com/a"}"#.into(),
/// });
/// let p: Fetch = kiln_plugin_sdk::payload::custom(&op, "fetch").unwrap();
/// assert_eq!(p.url, "https://example.com/a");
/// ```
pub fn custom<T: DeserializeOwned>(op: &Op, primitive: &str) -> Result<T, PayloadError> {
    let Op::Custom(c) = op else {
        return Err(PayloadError::NotCustom {
            primitive: primitive.to_owned(),
            kind: op.kind().to_string(),
        });
    };
    serde_json::from_str(&c.payload).map_err(|source| PayloadError::Invalid {
        primitive: primitive.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_graph::CustomOp;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct P {
        url: String,
        #[serde(default)]
        n: u32,
    }

    fn op(payload: &str) -> Op {
        Op::Custom(CustomOp {
            primitive: "x".into(),
            payload: payload.into(),
        })
    }

    #[test]
    fn decodes_and_names_the_primitive_in_errors() {
        let p: P = custom(&op(r#"{"url":"u","future":1}"#), "x").unwrap();
        assert_eq!(
            p,
            P {
                url: "u".into(),
                n: 0
            }
        );
        let e = custom::<P>(&op("{}"), "http").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid http payload: missing field `url`"),
            "{e}"
        );
        let e = custom::<P>(&Op::Merge, "git").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the git primitive runs custom ops, not merge ops"
        );
        let pe = PluginError::from(e);
        assert_eq!(pe.kind, ErrorKind::InvalidInput);
    }
}
